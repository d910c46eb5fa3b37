//go:build e2e

package e2e

import (
	"strconv"
	"testing"

	democlient "github.com/trellis-mesh/trellis/examples/apps/demo/client"
)

// The demo tools' own result types: what `trellis-demo get|grpc-chat|tcp-hello` print.
type (
	getResult  struct{ democlient.GetResult }
	chatResult = democlient.GRPCResult
	tcpResult  = democlient.TCPResult
)

// ok is the number of 2xx answers.
func (r getResult) ok() int { return r.Succeeded }

// requireAll fails the test unless every request got status.
func (r getResult) requireAll(t *testing.T, status int) {
	t.Helper()
	if r.Requests == 0 || r.Statuses[strconv.Itoa(status)] != r.Requests {
		t.Fatalf("want %d for all %d requests, got %v (errors: %v)", status, r.Requests, r.Statuses, r.Errors)
	}
}
