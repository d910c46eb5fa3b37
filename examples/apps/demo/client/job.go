package client

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
)

// JobOptions are the flags of `trellis-demo job`.
type JobOptions struct {
	URL     string
	N       int           // requests that must all succeed
	Timeout time.Duration // per request
	// Wait, when positive, first polls URL once a second until it answers 2xx (for at most
	// this long), so that a Job started with its dependencies does not fail on a cold
	// start. The N requests after that must all succeed.
	Wait time.Duration
}

// DefaultJobOptions are the flag defaults.
func DefaultJobOptions() JobOptions { return JobOptions{N: 5, Timeout: 5 * time.Second} }

// Validate says what is wrong with the options, for a usage error.
func (o JobOptions) Validate() error {
	if err := (GetOptions{URL: o.URL, N: o.N, Concurrency: 1, Timeout: o.Timeout}).Validate(); err != nil {
		return err
	}
	if o.Wait < 0 {
		return fmt.Errorf("--wait %s: want 0 (do not wait) or a positive duration", o.Wait)
	}
	return nil
}

// JobResult is what `trellis-demo job` prints.
type JobResult struct {
	URL       string         `json:"url"`
	Requests  int            `json:"requests"`
	Succeeded int            `json:"succeeded"`
	Failed    int            `json:"failed"`
	Statuses  map[string]int `json:"statuses"`
	Errors    []string       `json:"errors"`
	// WaitedMs is how long the --wait phase took; WaitAttempts how many polls it made.
	WaitedMs     float64 `json:"waitedMs"`
	WaitAttempts int     `json:"waitAttempts"`
	// OK is true when all N requests answered 2xx; the command exits 1 otherwise.
	OK bool `json:"ok"`
}

// Job makes o.N requests to o.URL one after another, after the --wait phase.
func Job(ctx context.Context, o JobOptions) JobResult {
	r := JobResult{URL: o.URL, Statuses: map[string]int{}, Errors: []string{}}
	hc := &http.Client{Transport: server.NewTransport(false, 1), Timeout: o.Timeout}
	var errs errorList
	if o.Wait > 0 {
		start := time.Now()
		deadline := start.Add(o.Wait)
		for {
			r.WaitAttempts++
			resp, _, _, err := fetch(ctx, hc, o.URL, nil)
			if err == nil && resp.StatusCode >= 200 && resp.StatusCode <= 299 {
				break
			}
			if time.Now().Add(time.Second).After(deadline) || ctx.Err() != nil {
				if err == nil {
					err = fmt.Errorf("%s answered %d", o.URL, resp.StatusCode)
				}
				errs.add(fmt.Sprintf("not ready within --wait %s: %v", o.Wait, err))
				break
			}
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
		}
		r.WaitedMs = ms(time.Since(start))
	}
	for range o.N {
		if ctx.Err() != nil {
			break
		}
		r.Requests++
		resp, _, _, err := fetch(ctx, hc, o.URL, nil)
		if err != nil {
			r.Failed++
			errs.add(err.Error())
			continue
		}
		r.Statuses[strconv.Itoa(resp.StatusCode)]++
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			r.Failed++
			errs.add(fmt.Sprintf("%s answered %d", o.URL, resp.StatusCode))
		} else {
			r.Succeeded++
		}
	}
	r.Errors = append(r.Errors, errs...)
	r.OK = r.Succeeded == o.N
	return r
}
