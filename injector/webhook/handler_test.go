package webhook

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/trellis-mesh/trellis/injector/podspec"
)

func testInjector(t *testing.T) *Injector {
	t.Helper()
	sch := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(sch); err != nil {
		t.Fatal(err)
	}
	return &Injector{
		Config:        podspec.DefaultConfig(),
		SkipNamespace: "trellis-system",
		Decoder:       admission.NewDecoder(sch),
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func request(ns string, op admissionv1.Operation, raw string) admission.Request {
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID:       "uid-1",
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: ns,
		Operation: op,
		Object:    runtime.RawExtension{Raw: []byte(raw)},
	}}
}

// podJSON has a field this build's Pod type does not know, as a newer apiserver's would.
const podJSON = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"shop"},
"spec":{"futureField":{"keep":"me"},"containers":[{"name":"web","image":"example.com/web:1",
"readinessProbe":{"tcpSocket":{"port":8080}}}]}}`

func TestInjectorHandle(t *testing.T) {
	h := testInjector(t)
	tests := []struct {
		name       string
		req        admission.Request
		wantPatch  bool
		wantDenied string
	}{
		{name: "a pod creation is patched", req: request("shop", admissionv1.Create, podJSON), wantPatch: true},
		{name: "an update is allowed unchanged", req: request("shop", admissionv1.Update, podJSON)},
		{name: "the control plane's namespace is allowed unchanged", req: request("trellis-system", admissionv1.Create, podJSON)},
		{
			name: "an opted-out pod is allowed unchanged",
			req:  request("shop", admissionv1.Create, strings.Replace(podJSON, `"name":"web","namespace"`, `"name":"web","annotations":{"trellis.dev/inject":"false"},"namespace"`, 1)),
		},
		{
			name:       "invalid annotations are denied with the injector's message",
			req:        request("shop", admissionv1.Create, strings.Replace(podJSON, `"name":"web","namespace"`, `"name":"web","annotations":{"trellis.dev/log-level":"loud"},"namespace"`, 1)),
			wantDenied: `annotation trellis.dev/log-level="loud": use debug, info, warn or error`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := h.Handle(context.Background(), tt.req)
			if tt.wantDenied != "" {
				if resp.Allowed || resp.Result == nil || resp.Result.Message != tt.wantDenied {
					t.Fatalf("response %+v, want denied with %q", resp.Result, tt.wantDenied)
				}
				return
			}
			if !resp.Allowed {
				t.Fatalf("denied: %+v", resp.Result)
			}
			if got := len(resp.Patches) > 0; got != tt.wantPatch {
				t.Fatalf("patched = %v, want %v", got, tt.wantPatch)
			}
			if !tt.wantPatch {
				return
			}
			patched := applyPatch(t, tt.req.Object.Raw, resp)

			// The patch turns the request into what Inject makes of the pod...
			var got, orig corev1.Pod
			if err := json.Unmarshal(patched, &got); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(tt.req.Object.Raw, &orig); err != nil {
				t.Fatal(err)
			}
			want, err := podspec.Inject(&orig, h.Config)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, &got); diff != "" {
				t.Errorf("patched pod differs from Inject's (-want +got):\n%s", diff)
			}
			// ...and keeps the fields this build does not know.
			var generic map[string]any
			if err := json.Unmarshal(patched, &generic); err != nil {
				t.Fatal(err)
			}
			if _, ok := generic["spec"].(map[string]any)["futureField"]; !ok {
				t.Error("the patch removed a field unknown to this build")
			}
		})
	}
}

func applyPatch(t *testing.T, raw []byte, resp admission.Response) []byte {
	t.Helper()
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v", resp.PatchType)
	}
	ops, err := json.Marshal(resp.Patches)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("apply the patch: %v", err)
	}
	return out
}

func TestConfiguration(t *testing.T) {
	o := DefaultOptions()
	mwc := Configuration(o, []byte("CA"))
	wh := mwc.Webhooks[0]
	if wh.ClientConfig.Service == nil || wh.ClientConfig.Service.Name != "trellis-controlplane" || *wh.ClientConfig.Service.Port != DefaultPort || *wh.ClientConfig.Service.Path != DefaultPath {
		t.Errorf("client config %+v", wh.ClientConfig)
	}
	if got := wh.NamespaceSelector.MatchExpressions[0]; got.Key != "kubernetes.io/metadata.name" || got.Values[0] != "trellis-system" {
		t.Errorf("namespace selector does not exclude the control plane's namespace: %+v", got)
	}
	o.URL = "https://127.0.0.1:9443/inject"
	if cc := Configuration(o, nil).Webhooks[0].ClientConfig; cc.Service != nil || *cc.URL != o.URL {
		t.Errorf("with a URL: %+v", cc)
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Options)
		wantErr string
	}{
		{name: "the defaults are valid", mutate: func(*Options) {}},
		{name: "a certificate shorter than three resyncs is refused", mutate: func(o *Options) { o.CertTTL = 2 * o.Resync }, wantErr: "more than three resync periods"},
		{name: "a CA shorter than three certificates is refused", mutate: func(o *Options) { o.CATTL = o.CertTTL }, wantErr: "more than three serving certificate lifetimes"},
		{name: "an unknown failure policy is refused", mutate: func(o *Options) { o.FailurePolicy = "Maybe" }, wantErr: `failure policy "Maybe"`},
		{name: "a timeout over 30s is refused", mutate: func(o *Options) { o.TimeoutSeconds = 31 }, wantErr: "1 to 30 seconds"},
		{name: "an invalid injection configuration is refused", mutate: func(o *Options) { o.Config.LogLevel = "loud" }, wantErr: "injection configuration: proxy log level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			tt.mutate(&o)
			err := o.validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("validate: %v, want %q", err, tt.wantErr)
			}
		})
	}
}
