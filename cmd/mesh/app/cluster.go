package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/pflag"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/kube"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DefaultNamespace is where `mesh install` puts the control plane.
const DefaultNamespace = "trellis-system"

var errNoKubeconfig = errors.New("no cluster to talk to: there is no kubeconfig ($KUBECONFIG or ~/.kube/config) and mesh is not running in a pod; " +
	"pass --kubeconfig FILE, or set KUBECONFIG")

// clusterOptions say which cluster a command talks to, as kubectl's flags do.
type clusterOptions struct {
	Kubeconfig string
	Context    string
}

func (o *clusterOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the pod's service account)")
	fs.StringVar(&o.Context, "context", o.Context, "kubeconfig context to use (default: the current context)")
}

// cluster is a connection to a reachable cluster.
type cluster struct {
	flags  *genericclioptions.ConfigFlags
	config *rest.Config
	client client.Client
}

// connect finds the cluster, checks that its API server answers, and returns clients for
// it whose default namespace is namespace. Its errors say what to do.
func (o *clusterOptions) connect(namespace string) (*cluster, error) {
	flags := genericclioptions.NewConfigFlags(true)
	if o.Kubeconfig != "" {
		flags.KubeConfig = &o.Kubeconfig
	}
	if o.Context != "" {
		flags.Context = &o.Context
	}
	flags.Namespace = &namespace
	// Like kubectl, client-go falls back to localhost:8080 without a kubeconfig; say so
	// instead of failing to connect there.
	if raw, err := flags.ToRawKubeConfigLoader().RawConfig(); err == nil && len(raw.Clusters) == 0 && os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, errNoKubeconfig
	}
	cfg, err := flags.ToRESTConfig()
	switch {
	case clientcmd.IsEmptyConfig(err):
		return nil, errNoKubeconfig
	case err != nil:
		return nil, fmt.Errorf("read the kubeconfig%s: %w; pass --kubeconfig FILE (and --context NAME) for the cluster to use", o.describe(), err)
	}
	probe := rest.CopyConfig(cfg)
	probe.Timeout = 15 * time.Second
	dc, err := discovery.NewDiscoveryClientForConfig(probe)
	if err != nil {
		return nil, fmt.Errorf("connect to the cluster at %s%s: %w", cfg.Host, o.describe(), err)
	}
	if _, err := dc.ServerVersion(); err != nil {
		return nil, fmt.Errorf("cannot reach the Kubernetes API server at %s%s: %w; check that the cluster is running and that the kubeconfig and context point at it",
			cfg.Host, o.describe(), err)
	}
	sch := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(sch); err != nil {
			return nil, fmt.Errorf("build the client's scheme: %w", err)
		}
	}
	c, err := client.New(cfg, client.Options{Scheme: sch})
	if err != nil {
		return nil, fmt.Errorf("create a client for %s: %w", cfg.Host, err)
	}
	return &cluster{flags: flags, config: cfg, client: c}, nil
}

// describe names the kubeconfig and context the user chose, for error messages.
func (o *clusterOptions) describe() string {
	s := ""
	if o.Kubeconfig != "" {
		s += " (kubeconfig " + o.Kubeconfig
	}
	if o.Context != "" {
		if s == "" {
			s += " ("
		} else {
			s += ", "
		}
		s += "context " + o.Context
	}
	if s != "" {
		s += ")"
	}
	return s
}

// helm returns a Helm action configuration for releases in namespace, stored as Secrets
// (Helm's default, so that the helm CLI sees the same releases).
func (c *cluster) helm(namespace string, log *slog.Logger) (*action.Configuration, error) {
	// Apply as the helm CLI does, so that `helm upgrade` after `mesh install` (and the
	// other way round) finds its own fields instead of conflicts. It is a package variable
	// of Helm's; mesh is the only Helm user in its process.
	kube.ManagedFieldsManager = "helm"
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(log.Handler()))
	if err := cfg.Init(c.flags, namespace, "secret"); err != nil {
		return nil, fmt.Errorf("set up Helm for namespace %s: %w", namespace, err)
	}
	return cfg, nil
}

// poll calls done every interval until it reports true or an error, or timeout passes.
func poll(ctx context.Context, interval, timeout time.Duration, done func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := done(ctx)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}
