package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/safelisten/reuse/internal/loadgen"
)

// restartResult is what one way of restarting cost the clients.
type restartResult struct {
	name string
	res  loadgen.Result
	took time.Duration
}

// printRestarts writes the restart table.
func printRestarts(w io.Writer, n int, rs []restartResult) error {
	fmt.Fprintf(w, "\nRestarts under load: HTTP/1.1 on 127.0.0.1, 16 clients that never retry (8 keep-alive,\n8 one connection per request), %d restarts each way.\n\n", n)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "restart\trequests ok\tfailed\trefused\treset\teof\tother\ttime\t")
	for _, r := range rs {
		other := r.res.Failures() - r.res.Failed[loadgen.Refused] - r.res.Failed[loadgen.Reset] - r.res.Failed[loadgen.EOF]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f s\t\n", r.name, r.res.OK, r.res.Failures(),
			r.res.Failed[loadgen.Refused], r.res.Failed[loadgen.Reset], r.res.Failed[loadgen.EOF], other, r.took.Seconds())
	}
	return tw.Flush()
}
