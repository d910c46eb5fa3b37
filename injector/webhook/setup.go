// Package webhook is the sidecar injector's mutating admission webhook: a controller-runtime
// webhook server (:15017) whose handler calls podspec.Inject, a MutatingWebhookConfiguration
// the control plane creates and keeps, and a certificate manager that issues the server's
// TLS certificate from a CA of its own, rotates both before they expire, and writes the CA
// into the configuration's caBundle. cmd/trellis-controlplane calls Setup.
package webhook

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"

	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	ctrlwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// nativeSidecarsSince is the first Kubernetes version with native sidecars on by default.
var nativeSidecarsSince = version.MustParseGeneric("1.29.0")

// Setup adds the injector to mgr: the certificate manager, the webhook server on
// opts.Host:opts.Port, and a readiness check named "injector" that passes once the server
// has a certificate its configuration trusts. Nothing runs until mgr starts.
func Setup(mgr ctrl.Manager, opts Options) error {
	if err := opts.validate(); err != nil {
		return fmt.Errorf("injector webhook: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "injector")

	if opts.DetectNativeSidecars && opts.Config.NativeSidecars {
		ok, v, err := supportsNativeSidecars(mgr.GetConfig())
		if err != nil {
			return fmt.Errorf("injector webhook: ask the apiserver its version, to choose native sidecars: %w", err)
		}
		if !ok {
			opts.Config.NativeSidecars = false
			log.Info("Kubernetes is older than 1.29: injecting the proxy as a regular container, not a native sidecar", "version", v)
		}
	}

	certs := newCertManager(mgr.GetAPIReader(), mgr.GetClient(), opts, log)
	server := ctrlwebhook.NewServer(ctrlwebhook.Options{
		Host: opts.Host,
		Port: opts.Port,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.GetCertificate = certs.GetCertificate
			c.MinVersion = tls.VersionTLS12
		}},
	})
	server.Register(opts.Path, &admission.Webhook{Handler: &Injector{
		Config:        opts.Config,
		SkipNamespace: opts.Namespace,
		Decoder:       admission.NewDecoder(mgr.GetScheme()),
		Logger:        log,
	}})
	if err := mgr.Add(certs); err != nil {
		return fmt.Errorf("injector webhook: add the certificate manager: %w", err)
	}
	if err := mgr.Add(server); err != nil {
		return fmt.Errorf("injector webhook: add the server: %w", err)
	}
	if err := mgr.AddReadyzCheck("injector", func(*http.Request) error { return certs.ready() }); err != nil {
		return fmt.Errorf("injector webhook: add the readiness check: %w", err)
	}
	log.Info("injector webhook set up", "addr", fmt.Sprintf("%s:%d", opts.Host, opts.Port), "path", opts.Path,
		"nativeSidecars", opts.Config.NativeSidecars, "failurePolicy", opts.FailurePolicy, "configuration", opts.ConfigurationName)
	return nil
}

func supportsNativeSidecars(cfg *rest.Config) (bool, string, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return false, "", err
	}
	info, err := dc.ServerVersion()
	if err != nil {
		return false, "", err
	}
	v, err := version.ParseGeneric(info.GitVersion)
	if err != nil {
		return false, info.GitVersion, fmt.Errorf("parse the apiserver's version %q: %w", info.GitVersion, err)
	}
	return v.AtLeast(nativeSidecarsSince), info.GitVersion, nil
}
