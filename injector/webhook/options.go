package webhook

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"

	"github.com/trellis-mesh/trellis/injector/podspec"
)

// Names of what the webhook creates and serves.
const (
	// ConfigurationName is the MutatingWebhookConfiguration the control plane owns.
	ConfigurationName = "trellis-injector"
	// WebhookName is the one webhook in it (the apiserver quotes it in its messages).
	WebhookName = "inject.trellis.dev"
	// CertSecretName holds the webhook's CA and serving certificate, in the control
	// plane's namespace.
	CertSecretName = "trellis-injector-tls"
	// DefaultPort is where the webhook server listens (and the Service's port for it).
	DefaultPort = 15017
	// DefaultPath is the webhook's HTTP path.
	DefaultPath = "/inject"
)

// Options configure the injector webhook. DefaultOptions gives every default.
type Options struct {
	// Config is what is injected; the caller sets its control-plane address and trust
	// domain from its own options.
	Config podspec.Config
	// DetectNativeSidecars asks the apiserver its version at start and turns
	// Config.NativeSidecars off on Kubernetes older than 1.29 (it never turns it on).
	DetectNativeSidecars bool

	// Namespace is the control plane's namespace: it holds CertSecretName, is never
	// injected, and (with ServiceName and ServicePort) is how the apiserver reaches the
	// webhook.
	Namespace   string
	ServiceName string
	ServicePort int32
	// URL, when set, is the webhook's address instead of the Service (tests, or a control
	// plane outside the cluster); the serving certificate must then name its host in
	// ExtraDNSNames or IPAddresses.
	URL string

	// Host and Port are the server's listen address; Path is the webhook's path.
	Host string
	Port int
	Path string

	// ConfigurationName and CertSecret name the objects the webhook keeps.
	ConfigurationName string
	CertSecret        string
	// ExtraDNSNames and IPAddresses are added to the serving certificate's Service names.
	ExtraDNSNames []string
	IPAddresses   []net.IP
	// CATTL and CertTTL are the lifetimes of the webhook's own CA and of its serving
	// certificate; each is renewed when a third of its lifetime is left. Resync is how
	// often every replica checks the Secret and the configuration.
	CATTL, CertTTL, Resync time.Duration

	// FailurePolicy is what the apiserver does when it cannot call the webhook: Fail
	// (the default) refuses the pod, Ignore creates it without the proxy.
	FailurePolicy admissionregistrationv1.FailurePolicyType
	// TimeoutSeconds bounds each call from the apiserver (1-30).
	TimeoutSeconds int32

	Logger *slog.Logger
}

// DefaultOptions are the chart's defaults.
func DefaultOptions() Options {
	return Options{
		Config:               podspec.DefaultConfig(),
		DetectNativeSidecars: true,
		Namespace:            "trellis-system",
		ServiceName:          "trellis-controlplane",
		ServicePort:          DefaultPort,
		Port:                 DefaultPort,
		Path:                 DefaultPath,
		ConfigurationName:    ConfigurationName,
		CertSecret:           CertSecretName,
		CATTL:                10 * 365 * 24 * time.Hour,
		CertTTL:              90 * 24 * time.Hour,
		Resync:               time.Minute,
		FailurePolicy:        admissionregistrationv1.Fail,
		TimeoutSeconds:       10,
	}
}

func (o Options) validate() error {
	var errs []error
	if o.Namespace == "" || o.ServiceName == "" || o.ConfigurationName == "" || o.CertSecret == "" {
		errs = append(errs, errors.New("the namespace, Service, configuration and Secret names must all be set"))
	}
	if o.URL == "" && (o.ServicePort < 1 || o.ServicePort > 65535) {
		errs = append(errs, fmt.Errorf("service port %d: ports are 1-65535", o.ServicePort))
	}
	if o.Port < 1 || o.Port > 65535 {
		errs = append(errs, fmt.Errorf("webhook port %d: ports are 1-65535", o.Port))
	}
	if o.Path == "" || o.Path[0] != '/' {
		errs = append(errs, fmt.Errorf("webhook path %q: must start with /", o.Path))
	}
	if o.Resync <= 0 || o.CertTTL/3 <= o.Resync {
		errs = append(errs, fmt.Errorf("the serving certificate's lifetime (%s) must be more than three resync periods (%s)", o.CertTTL, o.Resync))
	}
	if o.CATTL/3 <= o.CertTTL {
		errs = append(errs, fmt.Errorf("the webhook CA's lifetime (%s) must be more than three serving certificate lifetimes (%s)", o.CATTL, o.CertTTL))
	}
	switch o.FailurePolicy {
	case admissionregistrationv1.Fail, admissionregistrationv1.Ignore:
	default:
		errs = append(errs, fmt.Errorf("failure policy %q: use Fail or Ignore", o.FailurePolicy))
	}
	if o.TimeoutSeconds < 1 || o.TimeoutSeconds > 30 {
		errs = append(errs, fmt.Errorf("timeout %ds: the apiserver accepts 1 to 30 seconds", o.TimeoutSeconds))
	}
	if err := o.Config.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("injection configuration: %w", err))
	}
	return errors.Join(errs...)
}

// dnsNames are the names the apiserver may use for the Service, and the extra ones.
func (o Options) dnsNames() []string {
	base := o.ServiceName + "." + o.Namespace
	return append([]string{base + ".svc", base, base + ".svc.cluster.local"}, o.ExtraDNSNames...)
}
