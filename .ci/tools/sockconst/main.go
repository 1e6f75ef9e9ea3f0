// Command sockconst checks that every level and option number that a Go
// module passes to a setsockopt or getsockopt call comes from
// golang.org/x/sys, which generates them from each system's headers: the
// stdlib's syscall package has no SO_REUSEPORT on linux/386, amd64 and arm,
// and a hand-written 0x0F is wrong on mips, where it is 0x200.
//
//	go run ./sockconst -allow sockopt_windows.go=exclusiveAddrUse ../..
//
// It prints each finding as "file:line:col: why" and exits 1 if there is one.
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

func main() {
	allowed := map[string]string{}
	flag.Func("allow", "file=name: a constant written by hand that file may use (SO_EXCLUSIVEADDRUSE, which x/sys lacks)", func(v string) error {
		file, name, ok := strings.Cut(v, "=")
		if !ok {
			return fmt.Errorf("want file=name, not %q", v)
		}
		allowed[file] = name
		return nil
	})
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: sockconst [-allow file=name] module-dir")
		os.Exit(2)
	}
	findings, err := handWrittenSockopts(os.DirFS(flag.Arg(0)), allowed)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sockconst:", err)
		os.Exit(2)
	}
	for _, f := range findings {
		fmt.Println(f)
	}
	if len(findings) > 0 {
		os.Exit(1)
	}
}

var sockoptCall = regexp.MustCompile(`^(Set|Get)sockopt\w*$`)

// handWrittenSockopts returns, as "file:line:col: why", every level or
// option argument of a setsockopt or getsockopt call in the non-test Go
// files of the module at the root of fsys (nested modules and testdata
// left out) that does not come from golang.org/x/sys. allowed names, by
// file, the constants written by hand that may be used.
func handWrittenSockopts(fsys fs.FS, allowed map[string]string) ([]string, error) {
	dirs := map[string][]string{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			base := path.Base(p)
			if p != "." && (base == "testdata" || strings.HasPrefix(base, ".") || strings.HasPrefix(base, "_")) {
				return fs.SkipDir
			}
			if _, err := fs.Stat(fsys, path.Join(p, "go.mod")); p != "." && err == nil {
				return fs.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			dirs[path.Dir(p)] = append(dirs[path.Dir(p)], p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var findings []string
	for _, names := range dirs {
		s := &sockoptScan{fset: token.NewFileSet(), files: map[string]*ast.File{}, follow: map[*ast.FuncDecl]map[string]bool{}, consts: map[string]constDecl{}, funcs: map[string]*ast.FuncDecl{}, allowed: allowed}
		var files []*ast.File
		for _, name := range names {
			data, err := fs.ReadFile(fsys, name)
			if err != nil {
				return nil, err
			}
			// All files of the directory, whatever their build constraints:
			// a constant for one OS is as wrong as one for all.
			f, err := parser.ParseFile(s.fset, name, data, parser.SkipObjectResolution)
			if err != nil {
				return nil, err
			}
			files = append(files, f)
			s.collect(f)
		}
		for _, f := range files {
			findings = append(findings, s.check(f)...)
		}
	}
	slices.Sort(findings)
	return findings, nil
}

type constDecl struct {
	file  *ast.File
	value ast.Expr
}

type sockoptScan struct {
	fset    *token.FileSet
	files   map[string]*ast.File              // by name
	follow  map[*ast.FuncDecl]map[string]bool // locals being followed: x = x + 1 does not loop
	consts  map[string]constDecl              // package-level constants
	funcs   map[string]*ast.FuncDecl
	allowed map[string]string
}

func (s *sockoptScan) collect(f *ast.File) {
	s.files[s.fset.Position(f.Pos()).Filename] = f
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil {
				s.funcs[d.Name.Name] = d
			}
		case *ast.GenDecl:
			if d.Tok != token.CONST {
				continue
			}
			for _, spec := range d.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, n := range vs.Names {
					var v ast.Expr
					if i < len(vs.Values) {
						v = vs.Values[i]
					}
					s.consts[n.Name] = constDecl{f, v}
				}
			}
		}
	}
}

// check returns the findings of one file.
func (s *sockoptScan) check(f *ast.File) []string {
	var out []string
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Body == nil {
			continue
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) < 3 || !sockoptCall.MatchString(calleeName(call.Fun)) {
				return true
			}
			for _, arg := range call.Args[1:3] { // level, option
				if why := s.why(f, fn, arg, 0); why != "" {
					out = append(out, fmt.Sprintf("%s: %s", s.fset.Position(arg.Pos()), why))
				}
			}
			return true
		})
	}
	return out
}

func calleeName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return e.Sel.Name
	}
	return ""
}

// why says why e, in function fn of file f, is not a number from x/sys,
// or returns "".
func (s *sockoptScan) why(f *ast.File, fn *ast.FuncDecl, e ast.Expr, depth int) string {
	if depth > 8 {
		return "too deep to follow"
	}
	switch e := e.(type) {
	case *ast.BasicLit:
		return "a number"
	case *ast.ParenExpr:
		return s.why(f, fn, e.X, depth+1)
	case *ast.UnaryExpr:
		return s.why(f, fn, e.X, depth+1)
	case *ast.BinaryExpr:
		if w := s.why(f, fn, e.X, depth+1); w != "" {
			return w
		}
		return s.why(f, fn, e.Y, depth+1)
	case *ast.CallExpr: // a conversion such as int(unix.SO_LINGER)
		if len(e.Args) == 1 {
			return s.why(f, fn, e.Args[0], depth+1)
		}
	case *ast.SelectorExpr:
		if x, ok := e.X.(*ast.Ident); ok {
			if strings.HasPrefix(importPath(f, x.Name), "golang.org/x/sys/") {
				return ""
			}
			return x.Name + "." + e.Sel.Name + ", not from golang.org/x/sys"
		}
	case *ast.Ident:
		return s.whyIdent(f, fn, e, depth)
	}
	return fmt.Sprintf("%T, which this scan does not follow", e)
}

func (s *sockoptScan) whyIdent(f *ast.File, fn *ast.FuncDecl, id *ast.Ident, depth int) string {
	if fn != nil {
		if s.follow[fn][id.Name] {
			return "" // its other assignments say
		}
		if s.follow[fn] == nil {
			s.follow[fn] = map[string]bool{}
		}
		s.follow[fn][id.Name] = true
		defer delete(s.follow[fn], id.Name)
		// A parameter, or a local variable: follow its assignments.
		for _, field := range fn.Type.Params.List {
			for _, n := range field.Names {
				if n.Name == id.Name {
					return id.Name + ", a parameter"
				}
			}
		}
		var why string
		found := false
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			as, ok := n.(*ast.AssignStmt)
			if !ok || why != "" {
				return why == ""
			}
			for i, lhs := range as.Lhs {
				if l, ok := lhs.(*ast.Ident); !ok || l.Name != id.Name {
					continue
				}
				found = true
				switch {
				case len(as.Rhs) == len(as.Lhs):
					why = s.why(f, fn, as.Rhs[i], depth+1)
				case len(as.Rhs) == 1:
					why = s.whyResult(as.Rhs[0], i, depth)
				}
				if why != "" {
					why = fmt.Sprintf("%s, from %s", id.Name, strings.TrimPrefix(why, id.Name+", "))
				}
			}
			return why == ""
		})
		if found {
			return why
		}
	}
	if c, ok := s.consts[id.Name]; ok {
		name := s.fset.Position(c.file.Pos()).Filename
		if s.allowed[name] != id.Name || c.value == nil {
			return id.Name + ", a constant written here"
		}
		return s.why(c.file, nil, c.value, depth+1)
	}
	return id.Name + ", which this scan does not follow"
}

// whyResult follows result i of a call to a function of this package
// through its return statements; 0 is taken as "none", the value of a
// result that comes with false or an error.
func (s *sockoptScan) whyResult(e ast.Expr, i, depth int) string {
	call, ok := e.(*ast.CallExpr)
	if !ok {
		return fmt.Sprintf("%T, which this scan does not follow", e)
	}
	name, _ := call.Fun.(*ast.Ident)
	if name == nil || s.funcs[name.Name] == nil {
		return calleeName(call.Fun) + ", a call this scan does not follow"
	}
	fn := s.funcs[name.Name]
	f := s.fileOf(fn)
	var why string
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		ret, ok := n.(*ast.ReturnStmt)
		if !ok || why != "" || i >= len(ret.Results) {
			return why == ""
		}
		r := ret.Results[i]
		if lit, ok := r.(*ast.BasicLit); ok && lit.Value == "0" {
			return true
		}
		if w := s.why(f, fn, r, depth+1); w != "" {
			why = fmt.Sprintf("%s at %s: %s", name.Name, s.fset.Position(r.Pos()), w)
		}
		return why == ""
	})
	return why
}

func (s *sockoptScan) fileOf(n ast.Node) *ast.File {
	return s.files[s.fset.Position(n.Pos()).Filename]
}

// importPath returns the path that name is imported as in f, or "".
func importPath(f *ast.File, name string) string {
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		local := path.Base(p)
		if imp.Name != nil {
			local = imp.Name.Name
		}
		if local == name {
			return p
		}
	}
	return ""
}
