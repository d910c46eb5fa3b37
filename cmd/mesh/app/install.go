package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"helm.sh/helm/v4/pkg/action"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/cli/values"
	"helm.sh/helm/v4/pkg/kube"
	ri "helm.sh/helm/v4/pkg/release"
	release "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage/driver"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/charts"
	"github.com/trellis-mesh/trellis/internal/version"
)

const (
	// CreatedByLabel=CreatedByMesh marks a namespace that `mesh install` created, so that
	// `mesh uninstall` deletes it, and only it.
	CreatedByLabel = "trellis.dev/created-by"
	CreatedByMesh  = "mesh-install"

	// What Helm reads to decide that it owns an object.
	helmManagedBy        = "Helm"
	helmReleaseName      = "meta.helm.sh/release-name"
	helmReleaseNamespace = "meta.helm.sh/release-namespace"
	managedByLabel       = "app.kubernetes.io/managed-by"

	controlPlaneName = "trellis-controlplane"
	webhookConfig    = "trellis-injector"
)

// InstallOptions are the flags of `mesh install`.
type InstallOptions struct {
	Cluster     clusterOptions
	Namespace   string
	Values      values.Options
	ReuseValues bool
	Wait        bool
	Timeout     time.Duration
	DryRun      bool
}

// DefaultInstallOptions returns the defaults of `mesh install`.
func DefaultInstallOptions() *InstallOptions {
	return &InstallOptions{Namespace: DefaultNamespace, Timeout: 5 * time.Minute}
}

func newInstallCommand(root *Options) *cobra.Command {
	o := DefaultInstallOptions()
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the mesh, or upgrade it to this version of mesh",
		Long: `install puts Trellis on the cluster: its CRDs, and the Helm chart (the control plane, its
RBAC, Service, PodDisruptionBudget and the injector's webhook configuration) as the Helm
release "trellis" in --namespace, which it creates when missing.

When the release exists, install upgrades it: run it again with the same flags and nothing
changes; run a newer mesh and the mesh is upgraded, CRDs included. The chart's values are
set with --set and --values as in helm (see docs/install.md); values of an earlier install
are not kept unless --reuse-values.

The chart is built into mesh, so its images default to mesh's own version. The release is
an ordinary Helm release: helm status, helm history and helm rollback work on it.`,
		Example: `  mesh install
  mesh install --set image.registry=ghcr.io/me --set controlplane.replicas=2 --wait
  mesh install -f my-values.yaml --namespace mesh
  mesh install --dry-run | less`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := root.Logging.New(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return o.Run(cmd.Context(), cmd.OutOrStdout(), log)
		},
	}
	fs := cmd.Flags()
	o.Cluster.addFlags(fs)
	fs.StringVarP(&o.Namespace, "namespace", "n", o.Namespace, "namespace of the control plane and of the Helm release (created when missing)")
	fs.StringArrayVar(&o.Values.Values, "set", nil, "set a chart value, e.g. --set controlplane.replicas=2 (repeatable; a,b lists as in helm)")
	fs.StringArrayVar(&o.Values.StringValues, "set-string", nil, "set a chart value as a string (repeatable)")
	fs.StringSliceVarP(&o.Values.ValueFiles, "values", "f", nil, "a YAML file of chart values (repeatable; later files win; - for standard input)")
	fs.BoolVar(&o.ReuseValues, "reuse-values", o.ReuseValues, "on upgrade, keep the values of the installed release, under --set and --values")
	fs.BoolVar(&o.Wait, "wait", o.Wait, "wait until the control plane is ready (up to --timeout)")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "how long to wait for the control plane (--wait) and for the CRDs")
	fs.BoolVar(&o.DryRun, "dry-run", o.DryRun, "print the manifests (CRDs included) instead of installing; needs no cluster")
	return cmd
}

// Run installs or upgrades the mesh and reports to w.
func (o *InstallOptions) Run(ctx context.Context, w io.Writer, log *slog.Logger) error {
	ch, err := charts.LoadTrellis()
	if err != nil {
		return err
	}
	// The images default to the mesh binary's own version.
	ch.Metadata.AppVersion = version.Version
	vals, err := o.Values.MergeValues(nil)
	if err != nil {
		return fmt.Errorf("read the chart values: %w", err)
	}
	if o.DryRun {
		return o.render(ctx, w, ch, vals, log)
	}

	cl, err := o.Cluster.connect(o.Namespace)
	if err != nil {
		return err
	}
	if err := checkOneMesh(ctx, cl.client, o.Namespace); err != nil {
		return err
	}
	hcfg, err := cl.helm(o.Namespace, log)
	if err != nil {
		return err
	}
	last, err := lastRelease(hcfg, o.Namespace)
	if err != nil {
		return err
	}

	created, err := ensureNamespace(ctx, cl.client, o.Namespace)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(w, "created namespace %s\n", o.Namespace)
	}
	crds, err := chartCRDs(ch)
	if err != nil {
		return err
	}
	if err := applyCRDs(ctx, cl.client, crds, o.Timeout); err != nil {
		return err
	}
	names := make([]string, len(crds))
	for i, c := range crds {
		names[i] = c.crd.Name
	}
	fmt.Fprintf(w, "applied CustomResourceDefinitions %s\n", strings.Join(names, ", "))
	if adopted, err := adoptWebhookConfiguration(ctx, cl.client, o.Namespace); err != nil {
		return err
	} else if adopted {
		fmt.Fprintf(w, "adopted MutatingWebhookConfiguration %s, which a control plane created, into the release\n", webhookConfig)
	}

	wait := kube.HookOnlyStrategy
	if o.Wait {
		wait = kube.StatusWatcherStrategy
	}
	var (
		rel  ri.Releaser
		verb string
	)
	if last == nil {
		in := action.NewInstall(hcfg)
		in.ReleaseName, in.Namespace = charts.ReleaseName, o.Namespace
		in.SkipCRDs = true // applied above, and upgraded on every install
		in.WaitStrategy, in.Timeout = wait, o.Timeout
		in.ServerSideApply = true
		rel, err = in.RunWithContext(ctx, ch, vals)
		verb = "installed"
	} else {
		if last.Info.Status == "failed" {
			fmt.Fprintf(w, "the last change to release %s failed (%s); upgrading it\n", charts.ReleaseName, last.Info.Description)
		}
		up := action.NewUpgrade(hcfg)
		up.Namespace = o.Namespace
		up.SkipCRDs = true
		up.WaitStrategy, up.Timeout = wait, o.Timeout
		// The chart's fields win over edits (mesh install makes the cluster match the
		// chart); the control plane's own fields (the webhook's caBundle) are not the
		// chart's, so they stay.
		up.ServerSideApply, up.ForceConflicts = "true", true
		up.ResetValues = !o.ReuseValues
		up.ResetThenReuseValues = o.ReuseValues
		rel, err = up.RunWithContext(ctx, charts.ReleaseName, ch, vals)
		verb = "upgraded"
	}
	if err != nil {
		return fmt.Errorf("%s release %s in namespace %s: %w%s", strings.TrimSuffix(verb, "ed")+"e", charts.ReleaseName, o.Namespace, err, waitHint(o, err))
	}
	r, ok := rel.(*release.Release)
	if !ok {
		return fmt.Errorf("helm returned a release of type %T", rel)
	}
	fmt.Fprintf(w, "%s release %s in namespace %s: revision %d, chart %s-%s, image %s\n",
		verb, r.Name, r.Namespace, r.Version, ch.Metadata.Name, ch.Metadata.Version, imageSummary(r))
	if !o.Wait {
		fmt.Fprintf(w, "not waiting for the control plane (use --wait): kubectl -n %s rollout status deploy/%s\n", o.Namespace, controlPlaneName)
	}
	if r.Info.Notes != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(r.Info.Notes))
	}
	return nil
}

// render prints the manifests of an install, CRDs first, without a cluster.
func (o *InstallOptions) render(ctx context.Context, w io.Writer, ch *chart.Chart, vals map[string]any, log *slog.Logger) error {
	in := action.NewInstall(action.NewConfiguration(action.ConfigurationSetLogger(log.Handler())))
	in.ReleaseName, in.Namespace = charts.ReleaseName, o.Namespace
	in.DryRunStrategy = action.DryRunClient
	in.IncludeCRDs = true
	in.Replace = true
	rel, err := in.RunWithContext(ctx, ch, vals)
	if err != nil {
		return fmt.Errorf("render the chart: %w", err)
	}
	r, ok := rel.(*release.Release)
	if !ok {
		return fmt.Errorf("helm returned a release of type %T", rel)
	}
	// The namespace too, so that the output can be applied as it is.
	ns := fmt.Sprintf("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n    %s: %s\n", o.Namespace, CreatedByLabel, CreatedByMesh)
	_, err = io.WriteString(w, ns+strings.TrimPrefix(r.Manifest, "\n"))
	return err
}

// lastRelease returns the latest revision of the release, nil when there is none, or an
// error that says what to do when it is stuck in a pending state.
func lastRelease(hcfg *action.Configuration, namespace string) (*release.Release, error) {
	ri, err := hcfg.Releases.Last(charts.ReleaseName)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read Helm release %s in namespace %s: %w", charts.ReleaseName, namespace, err)
	}
	rel, ok := ri.(*release.Release)
	if !ok {
		return nil, fmt.Errorf("helm release %s in namespace %s has an unknown format %T", charts.ReleaseName, namespace, ri)
	}
	if rel.Info.Status.IsPending() {
		return rel, fmt.Errorf("release %s in namespace %s is %s (revision %d, since %s): an earlier install, upgrade or rollback was interrupted, "+
			"and Helm refuses to change a release in that state. Roll it back with `helm -n %s rollback %s`, or remove the mesh with "+
			"`mesh uninstall --namespace %s` and install again",
			rel.Name, namespace, rel.Info.Status, rel.Version, rel.Info.LastDeployed.Format(time.RFC3339), namespace, rel.Name, namespace)
	}
	return rel, nil
}

// checkOneMesh fails when Trellis is installed in another namespace: the webhook
// configuration and cluster roles have fixed names, so there is one mesh per cluster.
func checkOneMesh(ctx context.Context, c client.Client, namespace string) error {
	for _, obj := range []client.Object{
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: controlPlaneName}},
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: webhookConfig}},
	} {
		err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("look for an existing installation: %w", err)
		}
		if other := obj.GetAnnotations()[helmReleaseNamespace]; other != "" && other != namespace {
			return fmt.Errorf("trellis is already installed in namespace %s, and a cluster runs one mesh: upgrade it with "+
				"`mesh install --namespace %s`, or remove it first with `mesh uninstall --namespace %s`", other, other, other)
		}
	}
	return nil
}

// ensureNamespace creates the namespace when it is missing, labelled so that uninstall
// deletes it, and reports whether it did.
func ensureNamespace(ctx context.Context, c client.Client, name string) (bool, error) {
	var ns corev1.Namespace
	err := c.Get(ctx, client.ObjectKey{Name: name}, &ns)
	switch {
	case err == nil:
		if !ns.DeletionTimestamp.IsZero() {
			return false, fmt.Errorf("namespace %s is being deleted (an earlier uninstall?): wait until it is gone, then install again", name)
		}
		return false, nil
	case !apierrors.IsNotFound(err):
		return false, fmt.Errorf("get namespace %s: %w", name, err)
	}
	ns = corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{CreatedByLabel: CreatedByMesh}}}
	if err := c.Create(ctx, &ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return false, fmt.Errorf("create namespace %s: %w", name, err)
	}
	return true, nil
}

// adoptWebhookConfiguration marks a webhook configuration that a control plane created
// (it does so when it starts before the chart's copy exists, or after an uninstall that
// raced with it) as the release's, so that Helm takes it over instead of refusing to install.
func adoptWebhookConfiguration(ctx context.Context, c client.Client, namespace string) (bool, error) {
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	err := c.Get(ctx, client.ObjectKey{Name: webhookConfig}, &mwc)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get MutatingWebhookConfiguration %s: %w", webhookConfig, err)
	}
	if mwc.Annotations[helmReleaseName] != "" || mwc.Labels[managedByLabel] != "trellis" {
		return false, nil
	}
	patch := client.MergeFrom(mwc.DeepCopy())
	metav1.SetMetaDataLabel(&mwc.ObjectMeta, managedByLabel, helmManagedBy)
	metav1.SetMetaDataAnnotation(&mwc.ObjectMeta, helmReleaseName, charts.ReleaseName)
	metav1.SetMetaDataAnnotation(&mwc.ObjectMeta, helmReleaseNamespace, namespace)
	if err := c.Patch(ctx, &mwc, patch); err != nil {
		return false, fmt.Errorf("adopt MutatingWebhookConfiguration %s into the release: %w", webhookConfig, err)
	}
	return true, nil
}

// imageSummary names the control plane's image of a release.
func imageSummary(r *release.Release) string {
	for _, line := range strings.Split(r.Manifest, "\n") {
		if s := strings.TrimSpace(line); strings.HasPrefix(s, "image: ") {
			return strings.Trim(strings.TrimPrefix(s, "image: "), `"`)
		}
	}
	return "?"
}

// waitHint adds advice to a failed --wait.
func waitHint(o *InstallOptions, err error) string {
	if !o.Wait || !strings.Contains(err.Error(), "context deadline exceeded") && !strings.Contains(strings.ToLower(err.Error()), "timed out") {
		return ""
	}
	return fmt.Sprintf("; the control plane did not become ready in %s: see `kubectl -n %s get pods` and `kubectl -n %s logs deploy/%s` "+
		"(is the image %s pullable from the cluster? set image.registry, image.tag and image.pullPolicy)",
		o.Timeout, o.Namespace, o.Namespace, controlPlaneName, "trellis/controlplane")
}
