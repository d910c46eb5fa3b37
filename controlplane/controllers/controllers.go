// Package controllers watches the Kubernetes API and normalises what it reads into the
// meshstate model. Controllers never build xDS and never write status (the status package
// does, on the leader only): every replica runs them, so every replica can serve xDS.
package controllers

import (
	"context"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	policyv1alpha1 "github.com/trellis-mesh/trellis/api/policy/v1alpha1"
	splitv1alpha4 "github.com/trellis-mesh/trellis/api/split/v1alpha4"
	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// +kubebuilder:rbac:groups="",resources=services;pods;namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=split.smi-spec.io,resources=trafficsplits,verbs=get;list;watch
// +kubebuilder:rbac:groups=policy.trellis.dev,resources=trafficpolicies;authorizationpolicies;meshconfigs,verbs=get;list;watch

// Options configure the controllers.
type Options struct {
	// TrustDomain is the control plane's (and its CA's). A MeshConfig naming another is
	// reported, not obeyed: changing it would invalidate every certificate.
	TrustDomain string
	Logger      *slog.Logger
}

// Controllers are the registered controllers.
type Controllers struct {
	syncers []primer
}

type primer interface {
	prime(ctx context.Context, r client.Reader) error
}

// Setup registers one controller per watched kind with the manager.
func Setup(mgr ctrl.Manager, store *meshstate.Store, opts Options) (*Controllers, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	regs := []struct {
		name string
		obj  client.Object
		r    interface {
			reconcile.Reconciler
			primer
		}
	}{
		{"namespace", &corev1.Namespace{}, &syncer[*corev1.Namespace]{
			c: mgr.GetClient(), newObj: func() *corev1.Namespace { return &corev1.Namespace{} },
			newList: func() client.ObjectList { return &corev1.NamespaceList{} },
			set:     func(o *corev1.Namespace) error { store.SetNamespace(namespaceFromK8s(o)); return nil },
			del:     func(k meshstate.Key) { store.DeleteNamespace(k.Name) },
		}},
		{"service", &corev1.Service{}, &syncer[*corev1.Service]{
			c: mgr.GetClient(), newObj: func() *corev1.Service { return &corev1.Service{} },
			newList: func() client.ObjectList { return &corev1.ServiceList{} },
			set:     func(o *corev1.Service) error { store.SetService(serviceFromK8s(o)); return nil },
			del:     store.DeleteService,
		}},
		{"endpointslice", &discoveryv1.EndpointSlice{}, &syncer[*discoveryv1.EndpointSlice]{
			c: mgr.GetClient(), newObj: func() *discoveryv1.EndpointSlice { return &discoveryv1.EndpointSlice{} },
			newList: func() client.ObjectList { return &discoveryv1.EndpointSliceList{} },
			set: func(o *discoveryv1.EndpointSlice) error {
				if es := endpointSliceFromK8s(o); es != nil {
					store.SetEndpointSlice(es)
				}
				return nil
			},
			del: store.DeleteEndpointSlice,
		}},
		{"pod", &corev1.Pod{}, &syncer[*corev1.Pod]{
			c: mgr.GetClient(), newObj: func() *corev1.Pod { return &corev1.Pod{} },
			newList: func() client.ObjectList { return &corev1.PodList{} },
			set:     func(o *corev1.Pod) error { store.SetPod(podFromK8s(o)); return nil },
			del:     store.DeletePod,
		}},
		{"trafficsplit", &splitv1alpha4.TrafficSplit{}, &syncer[*splitv1alpha4.TrafficSplit]{
			c: mgr.GetClient(), newObj: func() *splitv1alpha4.TrafficSplit { return &splitv1alpha4.TrafficSplit{} },
			newList: func() client.ObjectList { return &splitv1alpha4.TrafficSplitList{} },
			set:     func(o *splitv1alpha4.TrafficSplit) error { store.SetSplit(splitFromAPI(o)); return nil },
			del:     store.DeleteSplit,
		}},
		{"trafficpolicy", &policyv1alpha1.TrafficPolicy{}, &syncer[*policyv1alpha1.TrafficPolicy]{
			c: mgr.GetClient(), newObj: func() *policyv1alpha1.TrafficPolicy { return &policyv1alpha1.TrafficPolicy{} },
			newList: func() client.ObjectList { return &policyv1alpha1.TrafficPolicyList{} },
			set: func(o *policyv1alpha1.TrafficPolicy) error {
				tp, err := trafficPolicyFromAPI(o)
				if err != nil {
					// Admission refuses such objects; one stored before the rule existed is
					// dropped (the Service keeps its defaults) rather than half-applied.
					store.DeleteTrafficPolicy(key(o.Namespace, o.Name))
					log.Error("ignoring invalid TrafficPolicy", "error", err)
					return nil
				}
				store.SetTrafficPolicy(tp)
				return nil
			},
			del: store.DeleteTrafficPolicy,
		}},
		{"authorizationpolicy", &policyv1alpha1.AuthorizationPolicy{}, &syncer[*policyv1alpha1.AuthorizationPolicy]{
			c: mgr.GetClient(), newObj: func() *policyv1alpha1.AuthorizationPolicy { return &policyv1alpha1.AuthorizationPolicy{} },
			newList: func() client.ObjectList { return &policyv1alpha1.AuthorizationPolicyList{} },
			set: func(o *policyv1alpha1.AuthorizationPolicy) error {
				store.SetAuthorizationPolicy(authorizationPolicyFromAPI(o))
				return nil
			},
			del: store.DeleteAuthorizationPolicy,
		}},
		{"meshconfig", &policyv1alpha1.MeshConfig{}, &syncer[*policyv1alpha1.MeshConfig]{
			c: mgr.GetClient(), newObj: func() *policyv1alpha1.MeshConfig { return &policyv1alpha1.MeshConfig{} },
			newList: func() client.ObjectList { return &policyv1alpha1.MeshConfigList{} },
			set: func(o *policyv1alpha1.MeshConfig) error {
				if o.Name != policyv1alpha1.MeshConfigName {
					return nil
				}
				m := meshFromAPI(o)
				if opts.TrustDomain != "" && m.TrustDomain != opts.TrustDomain {
					log.Error("MeshConfig names another trust domain than the control plane's; keeping the control plane's",
						"meshconfig", m.TrustDomain, "controlplane", opts.TrustDomain)
					m.TrustDomain = opts.TrustDomain
				}
				store.SetMesh(m)
				return nil
			},
			del: func(k meshstate.Key) {
				if k.Name != policyv1alpha1.MeshConfigName {
					return
				}
				m := meshstate.DefaultMesh()
				if opts.TrustDomain != "" {
					m.TrustDomain = opts.TrustDomain
				}
				store.SetMesh(m)
			},
		}},
	}
	out := &Controllers{}
	for _, reg := range regs {
		out.syncers = append(out.syncers, reg.r)
		err := ctrl.NewControllerManagedBy(mgr).
			Named(reg.name).
			For(reg.obj).
			WithOptions(controller.Options{NeedLeaderElection: ptr.To(false)}).
			Complete(reg.r)
		if err != nil {
			return nil, fmt.Errorf("set up the %s controller: %w", reg.name, err)
		}
	}
	return out, nil
}

// Prime lists every watched kind from r (the manager's synced cache) into the store. The
// control plane serves xDS only after Prime: informers having synced does not mean the
// reconcilers have drained their queues, and a proxy must never get a model that is half
// filled (it would drop every service not yet seen).
func (c *Controllers) Prime(ctx context.Context, r client.Reader) error {
	for _, s := range c.syncers {
		if err := s.prime(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// syncer copies one kind into the store: Get, then set on success or del when gone.
type syncer[T client.Object] struct {
	c       client.Reader
	newObj  func() T
	newList func() client.ObjectList
	set     func(T) error
	del     func(meshstate.Key)
}

func (s *syncer[T]) prime(ctx context.Context, r client.Reader) error {
	list := s.newList()
	if err := r.List(ctx, list); err != nil {
		return fmt.Errorf("list %T: %w", list, err)
	}
	items, err := meta.ExtractList(list)
	if err != nil {
		return fmt.Errorf("read %T: %w", list, err)
	}
	for _, item := range items {
		obj, ok := item.(T)
		if !ok {
			return fmt.Errorf("list %T holds %T", list, item)
		}
		if err := s.set(obj); err != nil {
			return err
		}
	}
	return nil
}

func (s *syncer[T]) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	obj := s.newObj()
	if err := s.c.Get(ctx, req.NamespacedName, obj); err != nil {
		if apierrors.IsNotFound(err) {
			s.del(key(req.Namespace, req.Name))
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, fmt.Errorf("get %s: %w", req.NamespacedName, err)
	}
	return reconcile.Result{}, s.set(obj)
}
