module github.com/safelisten/reuse/benchmarks

go 1.26.0

require github.com/safelisten/reuse v0.0.0

require (
	github.com/libp2p/go-reuseport v0.4.0 // indirect
	github.com/valyala/tcplisten v1.0.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)

replace github.com/safelisten/reuse => ../
