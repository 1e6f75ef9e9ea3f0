module github.com/safelisten/reuse/ci-tools

go 1.26.0
