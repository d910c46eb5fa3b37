package client_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/examples/apps/demo/client"
)

func TestJob(t *testing.T) {
	addr := serveHandler(t, httpServer("v1", "p").Handler())

	t.Run("all requests answered 2xx is ok", func(t *testing.T) {
		o := client.DefaultJobOptions()
		o.URL = "http://" + addr + "/"
		got := client.Job(context.Background(), o)
		want := client.JobResult{URL: o.URL, Requests: 5, Succeeded: 5, Statuses: map[string]int{"200": 5}, Errors: []string{}, OK: true}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("result (-want +got):\n%s", diff)
		}
	})

	t.Run("one request that is not 2xx is not ok", func(t *testing.T) {
		var n atomic.Int64
		flaky := serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) == 3 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}))
		o := client.DefaultJobOptions()
		o.URL = "http://" + flaky + "/"
		got := client.Job(context.Background(), o)
		if got.OK || got.Succeeded != 4 || got.Failed != 1 || got.Statuses["503"] != 1 || len(got.Errors) != 1 {
			t.Errorf("result %+v, want not ok with 4 succeeded and one 503", got)
		}
	})

	t.Run("with --wait it waits for the service to come up, then requires every request", func(t *testing.T) {
		var ready atomic.Bool
		late := serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !ready.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}))
		time.AfterFunc(1500*time.Millisecond, func() { ready.Store(true) })
		o := client.DefaultJobOptions()
		o.URL, o.Wait = "http://"+late+"/", 10*time.Second
		got := client.Job(context.Background(), o)
		if !got.OK || got.WaitAttempts < 2 || got.WaitedMs < 1000 || got.Succeeded != 5 {
			t.Errorf("result %+v, want ok after at least two polls over about 1.5s", got)
		}
	})

	t.Run("with --wait it gives up at the deadline and fails", func(t *testing.T) {
		o := client.DefaultJobOptions()
		o.URL, o.Wait, o.N, o.Timeout = "http://"+closedAddr(t)+"/", 1500*time.Millisecond, 1, time.Second
		start := time.Now()
		got := client.Job(context.Background(), o)
		if got.OK || len(got.Errors) == 0 || time.Since(start) > 5*time.Second {
			t.Errorf("result %+v after %s, want a failure soon after the 1.5s wait", got, time.Since(start))
		}
	})
}
