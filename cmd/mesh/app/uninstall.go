package app

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/kube"
	release "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage/driver"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/charts"
	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/injector/webhook"
)

// UninstallOptions are the flags of `mesh uninstall`.
type UninstallOptions struct {
	Cluster   clusterOptions
	Namespace string
	KeepCRDs  bool
	Timeout   time.Duration
}

// DefaultUninstallOptions returns the defaults of `mesh uninstall`.
func DefaultUninstallOptions() *UninstallOptions {
	return &UninstallOptions{Namespace: DefaultNamespace, Timeout: 5 * time.Minute}
}

func newUninstallCommand(root *Options) *cobra.Command {
	o := DefaultUninstallOptions()
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove the mesh and everything it made from the cluster",
		Long: `uninstall removes Trellis: the Helm release "trellis" in --namespace, then what the control
plane made at run time, which no Helm release knows of:

  - the MutatingWebhookConfiguration trellis-injector (if a control plane recreated it);
  - the Secrets of the mesh CA and of the webhook's certificate, when Trellis generated
    them (a CA you supplied is kept and named);
  - the leader-election Lease;
  - the trust-bundle ConfigMaps trellis-ca-root-cert in every namespace;
  - the CRDs, unless --keep-crds: deleting them deletes every TrafficSplit, TrafficPolicy,
    AuthorizationPolicy and MeshConfig in the cluster;
  - the namespace, when mesh install created it.

It prints what it removed. Namespaces keep their trellis.dev/inject label, and running pods
keep their sidecars until they are restarted; uninstall names those namespaces. Running it
again removes whatever is left.`,
		Example: `  mesh uninstall
  mesh uninstall --keep-crds --namespace mesh`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := root.Logging.New(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return o.Run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), log)
		},
	}
	fs := cmd.Flags()
	o.Cluster.addFlags(fs)
	fs.StringVarP(&o.Namespace, "namespace", "n", o.Namespace, "namespace the mesh was installed in")
	fs.BoolVar(&o.KeepCRDs, "keep-crds", o.KeepCRDs, "keep the CRDs, and with them every TrafficSplit and Trellis policy")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "how long to wait for the control plane's pods to stop")
	return cmd
}

// Run removes the mesh, reporting what it removed to w and warnings to warn.
func (o *UninstallOptions) Run(ctx context.Context, w, warn io.Writer, log *slog.Logger) error {
	cl, err := o.Cluster.connect(o.Namespace)
	if err != nil {
		return err
	}
	c := cl.client
	removed := 0
	report := func(format string, args ...any) {
		removed++
		fmt.Fprintf(w, format+"\n", args...)
	}

	// 1. The Helm release: the control plane, its RBAC, Service and webhook configuration.
	caSecret := "trellis-ca"
	hcfg, err := cl.helm(o.Namespace, log)
	if err != nil {
		return err
	}
	last, err := hcfg.Releases.Last(charts.ReleaseName)
	switch {
	case err == nil:
		rel, ok := last.(*release.Release)
		if !ok {
			return fmt.Errorf("helm release %s in namespace %s has an unknown format %T", charts.ReleaseName, o.Namespace, last)
		}
		if name := releaseCASecret(rel); name != "" {
			caSecret = name
		}
		un := action.NewUninstall(hcfg)
		un.WaitStrategy = kube.HookOnlyStrategy // the pods are waited for below
		un.Timeout = o.Timeout
		un.IgnoreNotFound = true
		if _, err := un.Run(charts.ReleaseName); err != nil {
			return fmt.Errorf("uninstall Helm release %s in namespace %s (%s): %w", charts.ReleaseName, o.Namespace, rel.Info.Status, err)
		}
		report("uninstalled Helm release %s in namespace %s (revision %d, %s)", rel.Name, o.Namespace, rel.Version, rel.Info.Status)
		for _, obj := range manifestObjects(rel.Manifest) {
			fmt.Fprintf(w, "  deleted %s\n", obj)
		}
	case errors.Is(err, driver.ErrReleaseNotFound):
		fmt.Fprintf(w, "no Helm release %s in namespace %s; removing what is left\n", charts.ReleaseName, o.Namespace)
	default:
		return fmt.Errorf("read Helm release %s in namespace %s: %w", charts.ReleaseName, o.Namespace, err)
	}

	// 2. No control plane may outlive the webhook configuration: it would recreate it.
	if err := o.waitForControlPlane(ctx, c, warn); err != nil {
		return err
	}

	// 3. What the control plane made at run time.
	for _, obj := range []client.Object{
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: webhookConfig}},
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: o.Namespace, Name: controlPlaneName}},
	} {
		ok, err := deleteIfExists(ctx, c, obj)
		if err != nil {
			return err
		}
		if ok {
			report("deleted %s", describe(c, obj))
		}
	}
	for _, name := range []string{caSecret, webhook.CertSecretName} {
		var sec corev1.Secret
		err := c.Get(ctx, client.ObjectKey{Namespace: o.Namespace, Name: name}, &sec)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return fmt.Errorf("get Secret %s/%s: %w", o.Namespace, name, err)
		case sec.Labels[identity.ManagedByLabel] != identity.ManagedByValue:
			fmt.Fprintf(warn, "kept Secret %s/%s: Trellis did not create it (no label %s=%s), so it is yours (a CA you supplied?)\n",
				o.Namespace, name, identity.ManagedByLabel, identity.ManagedByValue)
			continue
		}
		ok, err := deleteIfExists(ctx, c, &sec)
		if err != nil {
			return err
		}
		if ok {
			report("deleted Secret %s/%s", o.Namespace, name)
		}
	}
	var cms corev1.ConfigMapList
	if err := c.List(ctx, &cms, client.MatchingLabels{identity.ManagedByLabel: identity.ManagedByValue},
		client.MatchingFields{"metadata.name": identity.RootCertConfigMap}); err != nil {
		return fmt.Errorf("list the trust-bundle ConfigMaps %s: %w", identity.RootCertConfigMap, err)
	}
	for i := range cms.Items {
		ok, err := deleteIfExists(ctx, c, &cms.Items[i])
		if err != nil {
			return err
		}
		if ok {
			report("deleted ConfigMap %s/%s", cms.Items[i].Namespace, cms.Items[i].Name)
		}
	}

	// 4. The CRDs, and with them every object of theirs.
	if err := o.deleteCRDs(ctx, c, w, warn, report); err != nil {
		return err
	}

	// 5. The namespace, if mesh install made it.
	var ns corev1.Namespace
	err = c.Get(ctx, client.ObjectKey{Name: o.Namespace}, &ns)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("get namespace %s: %w", o.Namespace, err)
	case ns.Labels[CreatedByLabel] != CreatedByMesh:
		fmt.Fprintf(w, "kept namespace %s: mesh install did not create it\n", o.Namespace)
	case ns.DeletionTimestamp.IsZero():
		if _, err := deleteIfExists(ctx, c, &ns); err != nil {
			return err
		}
		report("deleted namespace %s (mesh install created it)", o.Namespace)
	}

	if removed == 0 {
		fmt.Fprintln(w, "nothing to remove: Trellis is not installed")
	}
	return o.reportMeshedNamespaces(ctx, c, w)
}

// waitForControlPlane waits until no control-plane pod runs in the namespace.
func (o *UninstallOptions) waitForControlPlane(ctx context.Context, c client.Client, warn io.Writer) error {
	sel := client.MatchingLabels{"app.kubernetes.io/name": "trellis", "app.kubernetes.io/component": "controlplane"}
	var left int
	err := poll(ctx, time.Second, o.Timeout, func(ctx context.Context) (bool, error) {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(o.Namespace), sel); err != nil {
			return false, fmt.Errorf("list the control plane's pods in namespace %s: %w", o.Namespace, err)
		}
		left = len(pods.Items)
		return left == 0, nil
	})
	if errors.Is(err, context.DeadlineExceeded) {
		fmt.Fprintf(warn, "warning: %d control-plane pods still run in namespace %s after %s; removing the webhook configuration anyway "+
			"(if one recreates it, run mesh uninstall again once they are gone)\n", left, o.Namespace, o.Timeout)
		return nil
	}
	return err
}

func (o *UninstallOptions) deleteCRDs(ctx context.Context, c client.Client, w, warn io.Writer, report func(string, ...any)) error {
	ch, err := charts.LoadTrellis()
	if err != nil {
		return err
	}
	crds, err := chartCRDs(ch)
	if err != nil {
		return err
	}
	if o.KeepCRDs {
		fmt.Fprintf(w, "kept the CustomResourceDefinitions (--keep-crds)\n")
		return nil
	}
	var counts []string
	for _, crd := range crds {
		if n := countCustomResources(ctx, c, crd.crd); n > 0 {
			counts = append(counts, fmt.Sprintf("%d %s", n, crd.crd.Spec.Names.Plural))
		}
	}
	if len(counts) > 0 {
		fmt.Fprintf(warn, "warning: deleting the CRDs deletes every object of theirs in the cluster: %s (use --keep-crds to keep them)\n", strings.Join(counts, ", "))
	}
	for _, crd := range crds {
		ok, err := deleteCRD(ctx, c, crd.crd.Name)
		if err != nil {
			return err
		}
		if ok {
			report("deleted CustomResourceDefinition %s", crd.crd.Name)
		}
	}
	return nil
}

// reportMeshedNamespaces names the namespaces still labelled for injection: their pods
// keep their sidecars, which can no longer get certificates, until they are restarted.
func (o *UninstallOptions) reportMeshedNamespaces(ctx context.Context, c client.Client, w io.Writer) error {
	var nss corev1.NamespaceList
	if err := c.List(ctx, &nss, client.MatchingLabels{identity.InjectLabel: identity.InjectEnabled}); err != nil {
		return fmt.Errorf("list the meshed namespaces: %w", err)
	}
	var names []string
	for _, ns := range nss.Items {
		if ns.DeletionTimestamp.IsZero() {
			names = append(names, ns.Name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	fmt.Fprintf(w, "\nNamespaces still labelled %s=%s: %s.\nTheir pods keep their sidecars, which get no new certificates, until restarted. For each:\n"+
		"  kubectl label namespace NAME %s- && kubectl -n NAME rollout restart deploy,statefulset,daemonset\n",
		identity.InjectLabel, identity.InjectEnabled, strings.Join(names, ", "), identity.InjectLabel)
	return nil
}

// releaseCASecret is the CA Secret a release's control plane used (mesh.ca.secretName).
func releaseCASecret(rel *release.Release) string {
	if rel.Chart == nil {
		return ""
	}
	vals, err := util.CoalesceValues(rel.Chart, rel.Config)
	if err != nil {
		return ""
	}
	name, _ := vals.PathValue("mesh.ca.secretName")
	s, _ := name.(string)
	return s
}

// manifestObjects names the objects of a release manifest: "Kind namespace/name".
func manifestObjects(manifest string) []string {
	var out []string
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(manifest)))
	for {
		doc, err := r.Read()
		if err != nil {
			break
		}
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if yaml.Unmarshal(doc, &head) != nil || head.Kind == "" {
			continue
		}
		name := head.Metadata.Name
		if head.Metadata.Namespace != "" {
			name = head.Metadata.Namespace + "/" + name
		}
		out = append(out, head.Kind+" "+name)
	}
	return out
}

// deleteIfExists deletes obj and reports whether it existed.
func deleteIfExists(ctx context.Context, c client.Client, obj client.Object) (bool, error) {
	if err := c.Delete(ctx, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("delete %s: %w", describe(c, obj), err)
	}
	return true, nil
}

// describe names an object as "Kind namespace/name".
func describe(c client.Client, obj client.Object) string {
	kind := obj.GetObjectKind().GroupVersionKind().Kind
	if kind == "" {
		if gvk, err := c.GroupVersionKindFor(obj); err == nil {
			kind = gvk.Kind
		}
	}
	name := obj.GetName()
	if obj.GetNamespace() != "" {
		name = obj.GetNamespace() + "/" + name
	}
	return kind + " " + name
}
