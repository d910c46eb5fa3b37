//go:build e2e

package e2e

import (
	"strconv"
	"testing"
)

// getResult is what `trellis-demo get` prints.
type getResult struct {
	Requests           int            `json:"requests"`
	Succeeded          int            `json:"succeeded"` // 2xx
	Status             map[string]int `json:"statuses"`
	Versions           map[string]int `json:"versions"`
	Protocols          map[string]int `json:"protocols"`
	PeerIdentities     []string       `json:"peerIdentities"`
	UpstreamIdentities []string       `json:"upstreamIdentities"`
	Errors             []string       `json:"errors"`
}

// ok is the number of 2xx answers.
func (r getResult) ok() int { return r.Succeeded }

// requireAll fails the test unless every request got status.
func (r getResult) requireAll(t *testing.T, status int) {
	t.Helper()
	if r.Requests == 0 || r.Status[strconv.Itoa(status)] != r.Requests {
		t.Fatalf("want %d for all %d requests, got %v (errors: %v)", status, r.Requests, r.Status, r.Errors)
	}
}

// chatResult is what `trellis-demo grpc-chat` prints.
type chatResult struct {
	Received       int      `json:"received"`
	PeerIdentities []string `json:"peerIdentities"`
	Error          string   `json:"error"`
}

// tcpResult is what `trellis-demo tcp-hello` prints.
type tcpResult struct {
	Banner string `json:"banner"`
	Echo   string `json:"echo"`
	Error  string `json:"error"`
}
