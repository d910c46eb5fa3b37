package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/trellis-mesh/trellis/injector/podspec"
)

// Injector is the mutating admission handler: it decodes the pod, calls podspec.Inject, and
// answers with the JSON patch that controller-runtime computes from the request's object to
// the injected one. It writes nothing; invalid trellis.dev/ annotations are denied with
// the injector's message.
type Injector struct {
	Config podspec.Config
	// SkipNamespace is never injected (the control plane's own), whatever its labels.
	SkipNamespace string
	Decoder       admission.Decoder
	Logger        *slog.Logger
}

var _ admission.Handler = (*Injector)(nil)

// Handle answers one admission request.
func (h *Injector) Handle(_ context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create || req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.SubResource != "" {
		return admission.Allowed("only pod creations are injected")
	}
	if req.Namespace == h.SkipNamespace {
		return admission.Allowed("the control plane's own namespace is never injected")
	}
	pod := &corev1.Pod{}
	if err := h.Decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode the pod: %w", err))
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "<generated>"
	}
	log := h.Logger.With("namespace", req.Namespace, "pod", name, "uid", req.UID)

	out, err := podspec.Inject(pod, h.Config)
	if err != nil {
		log.Info("refused a pod", "error", err)
		return admission.Denied(err.Error())
	}
	if reason, _ := podspec.SkipReason(pod); reason != "" {
		log.Debug("not injected", "reason", reason)
		return admission.Allowed(reason)
	}
	original, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("encode the pod: %w", err))
	}
	injected, err := json.Marshal(out)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("encode the injected pod: %w", err))
	}
	resp := admission.PatchResponseFromRaw(req.Object.Raw, injected)
	resp = dropRoundTripRemovals(resp, req.Object.Raw, original)
	log.Info("injected the sidecar", "status", out.Annotations[podspec.StatusAnnotation], "patchOps", len(resp.Patches))
	return resp
}

// dropRoundTripRemovals keeps the patch from removing fields that the injector never
// touched but that this build's Pod type does not know (a newer apiserver's fields): they
// vanish when the request is decoded, so the diff from the raw request would remove them.
// Only removals that decoding and encoding the pod alone would make are dropped.
func dropRoundTripRemovals(resp admission.Response, raw, roundTripped []byte) admission.Response {
	if !resp.Allowed || !slices.ContainsFunc(resp.Patches, isRemove) {
		return resp
	}
	lost, err := jsonpatch.CreatePatch(raw, roundTripped)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("compare the pod with its decoded form: %w", err))
	}
	removed := map[string]bool{}
	for _, op := range lost {
		if isRemove(op) {
			removed[op.Path] = true
		}
	}
	resp.Patches = slices.DeleteFunc(resp.Patches, func(op jsonpatch.JsonPatchOperation) bool {
		return isRemove(op) && removed[op.Path]
	})
	if len(resp.Patches) == 0 {
		resp.PatchType = nil
	}
	return resp
}

func isRemove(op jsonpatch.JsonPatchOperation) bool { return op.Operation == "remove" }
