// Command portcheck type-checks packages, their tests included, for every
// GOOS/GOARCH that `go tool dist list` names, in a fraction of the time that
// `go vet` or `go test -c` would take: those compile the standard library
// for each target (25-45 s each on a cold cache), while go/types checks the
// dependencies from source with function bodies skipped and needs no
// compiler at all. Only the packages named are checked in full.
//
//	go run ./internal/portcheck            # ./... on every target
//	go run ./internal/portcheck -targets linux/mips,plan9/386 ./...
//
// For each target it asks `go list -deps -test` (GOOS, GOARCH set,
// CGO_ENABLED=0) which files build there, so build constraints, vendoring
// and module resolution are the go command's own. What it cannot see is
// what only the compiler and linker see: assembly, cgo, go:linkname; `go
// vet` on a few targets covers those.
//
// It exits 1 if a package fails to type-check on any target.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// listed is the part of `go list -json` output that portcheck uses.
type listed struct {
	ImportPath string
	Name       string
	Dir        string
	GoFiles    []string
	CgoFiles   []string
	Imports    []string
	ImportMap  map[string]string
	Standard   bool
	DepOnly    bool
	ForTest    string
	Module     *struct {
		Main      bool
		GoVersion string
	}
	Error      *struct{ Err string }
	DepsErrors []*struct{ Err string }
}

// result is what checking one target found.
type result struct {
	target   string
	packages int // type-checked in full
	deps     int // type-checked without function bodies
	errs     []string
	took     time.Duration
}

func main() {
	targetsFlag := flag.String("targets", "", "comma-separated GOOS/GOARCH list (default: go tool dist list)")
	jobs := flag.Int("j", runtime.GOMAXPROCS(0), "targets checked at once")
	verbose := flag.Bool("v", false, "print every target, not only failures")
	flag.Parse()
	patterns := flag.Args()
	if len(patterns) == 0 {
		patterns = []string{"./..."}
	}
	targets, err := targetList(*targetsFlag)
	if err != nil {
		fmt.Fprintln(os.Stderr, "portcheck:", err)
		os.Exit(2)
	}

	start := time.Now()
	fset := token.NewFileSet()
	files := &fileCache{fset: fset, m: map[string]*parsed{}}
	results := make(chan result)
	sem := make(chan struct{}, max(*jobs, 1))
	for _, t := range targets {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results <- check(t, patterns, files)
		}()
	}
	all := make([]result, 0, len(targets))
	for range targets {
		all = append(all, <-results)
	}
	slices.SortFunc(all, func(a, b result) int { return strings.Compare(a.target, b.target) })
	failed := 0
	for _, r := range all {
		if len(r.errs) > 0 {
			failed++
			fmt.Printf("FAIL %-16s %d errors\n", r.target, len(r.errs))
			for _, e := range r.errs {
				fmt.Println("    " + e)
			}
		} else if *verbose {
			fmt.Printf("ok   %-16s %3d packages, %3d dependencies, %v\n", r.target, r.packages, r.deps, r.took.Round(time.Millisecond))
		}
	}
	fmt.Printf("portcheck: %d targets, %d failed, %d files parsed, %v\n", len(targets), failed, files.count(), time.Since(start).Round(time.Millisecond))
	if failed > 0 {
		os.Exit(1)
	}
}

// targetList returns the targets asked for, or every one the go command
// knows.
func targetList(flagValue string) ([]string, error) {
	if flagValue != "" {
		return strings.Split(flagValue, ","), nil
	}
	out, err := exec.Command("go", "tool", "dist", "list").Output()
	if err != nil {
		return nil, fmt.Errorf("go tool dist list: %w", err)
	}
	return strings.Fields(string(out)), nil
}

// check type-checks patterns, with their tests, for one target.
func check(target string, patterns []string, files *fileCache) result {
	start := time.Now()
	r := result{target: target}
	goos, goarch, ok := strings.Cut(target, "/")
	if !ok {
		r.errs = append(r.errs, fmt.Sprintf("target %q is not GOOS/GOARCH", target))
		return r
	}
	pkgs, roots, err := list(goos, goarch, patterns)
	if err != nil {
		r.errs = append(r.errs, err.Error())
		return r
	}
	c := &checker{
		roots: map[string]bool{},
		pkgs:  pkgs,
		files: files,
		sizes: types.SizesFor("gc", goarch),
		done:  map[string]*types.Package{},
		errs:  map[string][]string{},
	}
	if c.sizes == nil {
		r.errs = append(r.errs, "go/types has no sizes for "+goarch)
		return r
	}
	for _, id := range roots {
		c.roots[id] = true
	}
	for _, id := range roots {
		c.load(id)
	}
	seen := map[string]bool{} // a package and its test variant share files
	for id, errs := range c.errs {
		for _, e := range errs {
			if !c.full(id) {
				// An error in a dependency means portcheck cannot model
				// this target, not that the package is wrong.
				e = fmt.Sprintf("dependency %s (portcheck cannot check this target): %s", id, e)
			}
			if !seen[e] {
				seen[e] = true
				r.errs = append(r.errs, e)
			}
		}
	}
	for id := range c.done {
		if c.full(id) {
			r.packages++
		} else {
			r.deps++
		}
	}
	slices.Sort(r.errs)
	r.took = time.Since(start)
	return r
}

// list runs go list for the target and returns every package by ID, and
// the IDs to check in full: the packages matched and their test variants,
// without the generated test mains.
func list(goos, goarch string, patterns []string) (map[string]*listed, []string, error) {
	pkgs, err := goList(goos, goarch, append([]string{"-test"}, patterns...))
	if err != nil {
		return nil, nil, err
	}
	var roots []string
	for id, p := range pkgs {
		if !p.DepOnly && !strings.HasSuffix(id, ".test") {
			roots = append(roots, id)
		}
	}
	// A package that has a test variant is checked in that form, which
	// holds its _test.go files too.
	roots = slices.DeleteFunc(roots, func(id string) bool {
		for _, other := range roots {
			if pkgs[other].ForTest == id && strings.HasPrefix(other, id+" [") {
				return true
			}
		}
		return false
	})
	slices.Sort(roots)
	// go list leaves out the dependencies of a command it cannot link
	// (linkOnly): list its imports on their own.
	for range 3 {
		var missing []string
		for _, p := range pkgs {
			for _, imp := range p.Imports {
				if _, ok := pkgs[imp]; !ok && imp != "C" && !slices.Contains(missing, imp) {
					missing = append(missing, imp)
				}
			}
		}
		if len(missing) == 0 {
			break
		}
		more, err := goList(goos, goarch, missing)
		if err != nil {
			return nil, nil, err
		}
		for id, p := range more {
			if _, ok := pkgs[id]; !ok {
				p.DepOnly = true
				pkgs[id] = p
			}
		}
	}
	return pkgs, roots, nil
}

func goList(goos, goarch string, args []string) (map[string]*listed, error) {
	cmd := exec.Command("go", append([]string{"list", "-e", "-deps",
		"-json=ImportPath,Name,Dir,GoFiles,CgoFiles,Imports,ImportMap,Standard,DepOnly,ForTest,Module,Error,DepsErrors"}, args...)...)
	cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %v: %s", err, stderr.Bytes())
	}
	pkgs := map[string]*listed{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		p := new(listed)
		if err := dec.Decode(p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list output: %w", err)
		}
		pkgs[p.ImportPath] = p
	}
	return pkgs, nil
}

type checker struct {
	roots map[string]bool // checked in full, with function bodies
	pkgs  map[string]*listed
	files *fileCache
	sizes types.Sizes
	done  map[string]*types.Package
	errs  map[string][]string
}

// full reports whether id is checked with function bodies: a package asked
// for, a test variant of one, or another package of the main module.
func (c *checker) full(id string) bool {
	p := c.pkgs[id]
	return c.roots[id] || p != nil && p.Module != nil && p.Module.Main
}

// load type-checks package id after its imports, once.
func (c *checker) load(id string) *types.Package {
	if id == "unsafe" {
		return types.Unsafe
	}
	if pkg, ok := c.done[id]; ok {
		return pkg
	}
	p := c.pkgs[id]
	if p == nil {
		c.errs[id] = append(c.errs[id], "not in go list's output")
		c.done[id] = types.NewPackage(id, filepath.Base(id))
		return c.done[id]
	}
	c.done[id] = nil // an import cycle would find nil and fail below
	for _, e := range append([]*struct{ Err string }{p.Error}, p.DepsErrors...) {
		if e != nil && !linkOnly(e.Err) {
			c.errs[id] = append(c.errs[id], e.Err)
		}
	}
	if len(p.CgoFiles) > 0 {
		c.errs[id] = append(c.errs[id], "has cgo files although CGO_ENABLED=0")
	}
	var files []*ast.File
	for _, name := range p.GoFiles {
		f, err := c.files.parse(filepath.Join(p.Dir, name))
		if err != nil {
			c.errs[id] = append(c.errs[id], err.Error())
			continue
		}
		files = append(files, f)
	}
	full := c.full(id)
	conf := types.Config{
		Importer:         importerFunc(func(path string) (*types.Package, error) { return c.importFrom(p, path) }),
		Sizes:            c.sizes,
		IgnoreFuncBodies: !full,
		FakeImportC:      true,
		Error: func(err error) {
			if te, ok := err.(types.Error); ok && te.Soft && !full {
				return // "declared and not used" and the like: not ours
			}
			c.errs[id] = append(c.errs[id], err.Error())
		},
	}
	if p.Module != nil && p.Module.GoVersion != "" {
		conf.GoVersion = "go" + p.Module.GoVersion
	}
	path, _, _ := strings.Cut(id, " ")
	pkg, _ := conf.Check(path, c.files.fset, files, nil)
	c.done[id] = pkg
	return pkg
}

func (c *checker) importFrom(p *listed, path string) (*types.Package, error) {
	id := path
	if mapped, ok := p.ImportMap[path]; ok {
		id = mapped
	}
	pkg := c.load(id)
	if pkg == nil {
		return nil, fmt.Errorf("import cycle through %s", id)
	}
	return pkg, nil
}

// linkOnly reports whether a go list error is about linking, which type
// checking does not do: android/386, amd64 and arm, and ios, link commands
// only through cgo, which needs the target's C toolchain. Their packages
// are still checked, with the files CGO_ENABLED=0 selects.
func linkOnly(err string) bool {
	return strings.HasSuffix(err, "requires external (cgo) linking, but cgo is not enabled")
}

type importerFunc func(path string) (*types.Package, error)

func (f importerFunc) Import(path string) (*types.Package, error) { return f(path) }

// fileCache parses each file once for all targets: the syntax tree does
// not depend on the target, and go/types only reads it.
type fileCache struct {
	fset *token.FileSet
	mu   sync.Mutex
	m    map[string]*parsed
}

type parsed struct {
	once sync.Once
	f    *ast.File
	err  error
}

func (fc *fileCache) parse(name string) (*ast.File, error) {
	fc.mu.Lock()
	p, ok := fc.m[name]
	if !ok {
		p = new(parsed)
		fc.m[name] = p
	}
	fc.mu.Unlock()
	p.once.Do(func() {
		p.f, p.err = parser.ParseFile(fc.fset, name, nil, parser.ParseComments|parser.SkipObjectResolution)
	})
	return p.f, p.err
}

func (fc *fileCache) count() int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return len(fc.m)
}
