package status

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	policyv1alpha1 "github.com/trellis-mesh/trellis/api/policy/v1alpha1"
	splitv1alpha4 "github.com/trellis-mesh/trellis/api/split/v1alpha4"
	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// +kubebuilder:rbac:groups=split.smi-spec.io,resources=trafficsplits/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=policy.trellis.dev,resources=trafficpolicies/status;authorizationpolicies/status;meshconfigs/status,verbs=get;update;patch

// Writer keeps the status of TrafficSplits, TrafficPolicies, AuthorizationPolicies and the
// MeshConfig in line with the model. It runs on the elected leader only.
type Writer struct {
	Client client.Client
	Store  *meshstate.Store
	// TrustDomain is the control plane's; a MeshConfig naming another is not Accepted.
	TrustDomain string
	Logger      *slog.Logger
	// Debounce groups bursts of changes into one pass (default 250ms); Resync retries
	// failed writes (default 30s).
	Debounce, Resync time.Duration
}

// NeedLeaderElection makes the manager run the writer on the leader only.
func (w *Writer) NeedLeaderElection() bool { return true }

// Start writes statuses until ctx ends.
func (w *Writer) Start(ctx context.Context) error {
	changed := w.Store.Subscribe()
	debounce, resync := orDefault(w.Debounce, 250*time.Millisecond), orDefault(w.Resync, 30*time.Second)
	tick := time.NewTicker(resync)
	defer tick.Stop()
	for {
		if err := w.Sync(ctx); err != nil && ctx.Err() == nil {
			w.log().Error("write status", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(debounce):
			}
		case <-tick.C:
		}
	}
}

func orDefault(v, def time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return def
}

func (w *Writer) log() *slog.Logger {
	if w.Logger != nil {
		return w.Logger
	}
	return slog.Default()
}

// Sync computes every status from the current model and writes those that differ.
func (w *Writer) Sync(ctx context.Context) error {
	st, _ := w.Store.Snapshot()
	var errs []error
	for ref, rep := range Compute(meshstate.NewIndex(st)) {
		if err := w.apply(ctx, ref, rep); err != nil {
			errs = append(errs, err)
		}
	}
	if err := w.applyMeshConfig(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// statusOf returns the object to read and pointers into its status.
func statusOf(kind Kind) (client.Object, func() (*int64, *[]metav1.Condition)) {
	switch kind {
	case KindTrafficSplit:
		o := &splitv1alpha4.TrafficSplit{}
		return o, func() (*int64, *[]metav1.Condition) { return &o.Status.ObservedGeneration, &o.Status.Conditions }
	case KindTrafficPolicy:
		o := &policyv1alpha1.TrafficPolicy{}
		return o, func() (*int64, *[]metav1.Condition) { return &o.Status.ObservedGeneration, &o.Status.Conditions }
	default:
		o := &policyv1alpha1.AuthorizationPolicy{}
		return o, func() (*int64, *[]metav1.Condition) { return &o.Status.ObservedGeneration, &o.Status.Conditions }
	}
}

func (w *Writer) apply(ctx context.Context, ref Ref, rep Report) error {
	obj, fields := statusOf(ref.Kind)
	if err := w.Client.Get(ctx, client.ObjectKey{Namespace: ref.Key.Namespace, Name: ref.Key.Name}, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("get %s %s: %w", ref.Kind, ref.Key, err)
	}
	if obj.GetGeneration() != rep.ObservedGeneration {
		return nil // the model has not caught up with this object yet; a later pass will
	}
	gen, conds := fields()
	if !setConditions(gen, conds, rep) {
		return nil
	}
	if err := w.Client.Status().Update(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("update status of %s %s: %w", ref.Kind, ref.Key, err)
	}
	return nil
}

// setConditions writes rep into the status fields and reports whether anything changed.
func setConditions(gen *int64, conds *[]metav1.Condition, rep Report) bool {
	changed := *gen != rep.ObservedGeneration
	*gen = rep.ObservedGeneration
	for _, c := range rep.Conditions {
		c.ObservedGeneration = rep.ObservedGeneration
		if meta.SetStatusCondition(conds, c) {
			changed = true
		}
	}
	return changed
}

func (w *Writer) applyMeshConfig(ctx context.Context) error {
	mc := &policyv1alpha1.MeshConfig{}
	if err := w.Client.Get(ctx, client.ObjectKey{Name: policyv1alpha1.MeshConfigName}, mc); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("get MeshConfig: %w", err)
	}
	accepted := cond(Accepted, true, "Accepted", "mesh settings in effect")
	if w.TrustDomain != "" && mc.Spec.TrustDomain != w.TrustDomain {
		accepted = cond(Accepted, false, "TrustDomainMismatch", fmt.Sprintf(
			"trustDomain %q differs from the control plane's %q, which stays in effect; set the chart value trustDomain and reinstall to change it",
			mc.Spec.TrustDomain, w.TrustDomain))
	}
	rep := Report{ObservedGeneration: mc.Generation, Conditions: []metav1.Condition{accepted}}
	if !setConditions(&mc.Status.ObservedGeneration, &mc.Status.Conditions, rep) {
		return nil
	}
	if err := w.Client.Status().Update(ctx, mc); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("update MeshConfig status: %w", err)
	}
	return nil
}
