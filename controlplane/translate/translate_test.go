package translate

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// meshedPod is a State with one injected pod that serves HTTP on 8080 behind a Service.
func meshedPod(mode meshstate.MTLSMode) *meshstate.State {
	s := meshstate.NewState()
	s.Mesh.MTLSMode = mode
	pod := &meshstate.Pod{Key: meshstate.Key{Namespace: "shop", Name: "web-1"}, ServiceAccount: "web", Injected: true,
		Ports: []meshstate.ContainerPort{{Port: 8080}, {Port: 9000}}}
	s.Pods[pod.Key] = pod
	svc := &meshstate.Service{Key: meshstate.Key{Namespace: "shop", Name: "web"}, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
		Ports: []meshstate.ServicePort{{Name: "http", Port: 80, Protocol: meshstate.ProtocolHTTP}, {Name: "other", Port: 7000}}}
	s.Services[svc.Key] = svc
	es := &meshstate.EndpointSlice{Key: meshstate.Key{Namespace: "shop", Name: "web-x"}, Service: svc.Key,
		Ports:     []meshstate.EndpointPort{{Name: "http", Port: 8080}, {Name: "other", Port: 7000}},
		Endpoints: []meshstate.EndpointSliceEntry{{Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Ready: true, Pod: &pod.Key}}}
	s.EndpointSlices[es.Key] = es
	return s
}

func TestInboundModes(t *testing.T) {
	tests := []struct {
		name       string
		mode       meshstate.MTLSMode
		wantStrict bool
	}{
		{"STRICT accepts only mTLS on every chain, the default chain included", meshstate.MTLSStrict, true},
		{"a mode Trellis does not know is read as STRICT, so it fails closed", "SOMETIMES", true},
		{"PERMISSIVE also accepts plaintext", meshstate.MTLSPermissive, false},
		{"an unset mode is PERMISSIVE, the API default", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := NewBuilder(meshstate.NewIndex(meshedPod(tt.mode))).Build(Proxy{Pod: meshstate.Key{Namespace: "shop", Name: "web-1"}})
			if err != nil {
				t.Fatal(err)
			}
			if err := acceptsOnlyTLS(res); (err == nil) != tt.wantStrict {
				t.Errorf("acceptsOnlyTLS = %v, want strict %v", err, tt.wantStrict)
			}
		})
	}
}

func TestBuildIsSafeForConcurrentUse(t *testing.T) {
	s := meshedPod(meshstate.MTLSPermissive)
	for i := range 20 {
		p := &meshstate.Pod{Key: meshstate.Key{Namespace: "shop", Name: fmt.Sprintf("client-%d", i)}, ServiceAccount: "client", Injected: true,
			Ports: []meshstate.ContainerPort{{Port: uint32(8000 + i)}}}
		s.Pods[p.Key] = p
	}
	b := NewBuilder(meshstate.NewIndex(s))
	want := map[meshstate.Key]*Resources{}
	for key := range s.Pods {
		res, err := b.Build(Proxy{Pod: key})
		if err != nil {
			t.Fatal(err)
		}
		want[key] = res
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(s.Pods)*4)
	for range 4 {
		for key := range s.Pods {
			wg.Go(func() {
				res, err := b.Build(Proxy{Pod: key})
				if err != nil || !equalResources(res, want[key]) {
					errs <- fmt.Errorf("concurrent Build of %s differs from the sequential one (err %v)", key, err)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestBuildErrorsSayWhatToDo(t *testing.T) {
	s := meshedPod(meshstate.MTLSPermissive)
	plain := &meshstate.Pod{Key: meshstate.Key{Namespace: "shop", Name: "plain"}}
	s.Pods[plain.Key] = plain
	b := NewBuilder(meshstate.NewIndex(s))
	tests := []struct {
		name string
		pod  meshstate.Key
		want string
	}{
		{"an unknown pod may not be synced yet", meshstate.Key{Namespace: "shop", Name: "ghost"}, "proxy shop/ghost: pod not found in the mesh state; it may not be synced yet"},
		{"a pod without a sidecar gets nothing", plain.Key, "proxy shop/plain: pod is not injected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := b.Build(Proxy{Pod: tt.pod})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestFitWeights(t *testing.T) {
	tests := []struct {
		name string
		in   []weightedCluster
		want []weightedCluster
	}{
		{
			"weights that fit in uint32 are kept as they are",
			[]weightedCluster{{"a", 90}, {"b", 10}},
			[]weightedCluster{{"a", 90}, {"b", 10}},
		},
		{
			"weights whose sum overflows uint32 are scaled down, keeping proportions",
			[]weightedCluster{{"a", math.MaxUint32}, {"b", math.MaxUint32}},
			[]weightedCluster{{"a", math.MaxUint32 / 2}, {"b", math.MaxUint32 / 2}},
		},
		{
			"a weight that scales down to 0 is dropped",
			[]weightedCluster{{"a", math.MaxUint32}, {"b", math.MaxUint32}, {"c", 1}},
			[]weightedCluster{{"a", math.MaxUint32 / 2}, {"b", math.MaxUint32 / 2}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sum uint64
			for _, w := range tt.in {
				sum += uint64(w.weight)
			}
			got := fitWeights(tt.in, sum)
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(weightedCluster{})); diff != "" {
				t.Errorf("fitWeights (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDurationText(t *testing.T) {
	tests := []struct {
		name string
		in   time.Duration
		want string
	}{
		{"whole seconds have no fraction", 10 * time.Second, "10s"},
		{"minutes are written in seconds", time.Minute, "60s"},
		{"milliseconds take three digits", 250 * time.Millisecond, "0.250s"},
		{"microseconds take six digits", 1500 * time.Microsecond, "0.001500s"},
		{"nanoseconds take nine digits", time.Second + time.Nanosecond, "1.000000001s"},
		{"zero is 0s", 0, "0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := durationText(tt.in); got != tt.want {
				t.Errorf("durationText(%v) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
