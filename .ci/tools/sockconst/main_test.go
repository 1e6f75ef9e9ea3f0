package main

import (
	"regexp"
	"slices"
	"testing"
	"testing/fstest"
)

// TestFindsThem runs the scan on code that
// does it wrong, in each way it knows.
func TestFindsThem(t *testing.T) {
	src := func(imports, body string) *fstest.MapFile {
		return &fstest.MapFile{Data: []byte("package p\n\nimport (\n" + imports + "\n)\n\n" + body + "\n")}
	}
	const xsys = `"golang.org/x/sys/unix"`
	fsys := fstest.MapFS{
		"go.mod":             {Data: []byte("module m\n")},
		"literal.go":         src(xsys, `func a(fd int) { unix.SetsockoptInt(fd, unix.SOL_SOCKET, 0x0F, 1) }`),
		"level.go":           src(xsys, `func b(fd int) { unix.SetsockoptInt(fd, 0xffff, unix.SO_REUSEADDR, 1) }`),
		"stdlib.go":          src(`"syscall"`, `func c(fd int) { syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) }`),
		"const.go":           src(xsys, "const soReusePortNum = 15\n\nfunc d(fd int) { unix.SetsockoptInt(fd, unix.SOL_SOCKET, soReusePortNum, 1) }"),
		"derived.go":         src(xsys, "const derived = ^unix.SO_REUSEADDR\n\nfunc e(fd int) { unix.SetsockoptInt(fd, unix.SOL_SOCKET, derived, 1) }"),
		"returned.go":        src(xsys, "func opt() (int, bool) { return 15, true }\n\nfunc f(fd int) { n, ok := opt(); if ok { unix.SetsockoptInt(fd, unix.SOL_SOCKET, n, 1) } }"),
		"param.go":           src(xsys, `func g(fd, opt int) { unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, 1) }`),
		"getsockopt.go":      src(xsys, `func h(fd int) { unix.GetsockoptInt(fd, unix.SOL_SOCKET, 15) }`),
		"fine.go":            src(xsys, "func good() (int, bool) { if true { return unix.SO_REUSEPORT, true }; return 0, false }\n\nfunc i(fd int) { v := int(unix.SO_REUSEADDR); n, _ := good(); unix.SetsockoptInt(fd, unix.SOL_SOCKET, v|n, 1) }"),
		"allowed.go":         src(xsys, "const exclusive = ^unix.SO_REUSEADDR\n\nfunc j(fd int) { unix.SetsockoptInt(fd, unix.SOL_SOCKET, exclusive, 1) }"),
		"x_test.go":          src(xsys, `func k(fd int) { unix.SetsockoptInt(fd, unix.SOL_SOCKET, 15, 1) }`),
		"testdata/t.go":      src(xsys, `func l(fd int) { unix.SetsockoptInt(fd, unix.SOL_SOCKET, 15, 1) }`),
		"nested/go.mod":      {Data: []byte("module n\n")},
		"nested/n.go":        src(xsys, `func m(fd int) { unix.SetsockoptInt(fd, unix.SOL_SOCKET, 15, 1) }`),
		"sub/sockopt_sub.go": src(xsys, `func o(fd int) { unix.SetsockoptLinger(fd, unix.SOL_SOCKET, 13, nil) }`),
	}
	got, err := handWrittenSockopts(fsys, map[string]string{"allowed.go": "exclusive"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"const.go: soReusePortNum, a constant written here",
		"derived.go: derived, a constant written here",
		"getsockopt.go: a number",
		"level.go: a number",
		"literal.go: a number",
		"param.go: opt, a parameter",
		"returned.go: n, from opt at returned.go: a number",
		"stdlib.go: syscall.SOL_SOCKET, not from golang.org/x/sys",
		"stdlib.go: syscall.SO_REUSEADDR, not from golang.org/x/sys",
		"sub/sockopt_sub.go: a number",
	}
	for i := range got {
		got[i] = regexp.MustCompile(`:\d+:\d+`).ReplaceAllString(got[i], "")
	}
	if !slices.Equal(want, got) {
		t.Errorf("findings:\n got %q\nwant %q", got, want)
	}
}
