module github.com/safelisten/reuse/benchmarks

go 1.26.0

require (
	github.com/cloudflare/tableflip v1.2.3
	github.com/libp2p/go-reuseport v0.4.0
	github.com/safelisten/reuse v0.0.0
	github.com/valyala/tcplisten v1.0.0
	golang.org/x/sys v0.50.0
)

replace github.com/safelisten/reuse => ../
