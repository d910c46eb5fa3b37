package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// +kubebuilder:rbac:groups="",namespace=trellis-system,resources=secrets,verbs=get;create;update
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=create
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,resourceNames=trellis-injector,verbs=get;update

// certManager keeps the webhook's TLS material: a CA of its own and a serving certificate,
// in the Secret opts.CertSecret, shared by every replica; it writes the CA bundle into the
// MutatingWebhookConfiguration, which it creates and keeps as Configuration says; and it
// serves the certificate to the webhook server.
//
// It runs on every replica, without leader election: replicas race only through the
// apiserver's optimistic concurrency (create once, update at a resourceVersion), and all
// of them compute the same configuration from the same Secret.
type certManager struct {
	reader client.Reader // uncached: one Secret and one configuration, no informer needed
	writer client.Writer
	opts   Options
	params certParams
	now    func() time.Time
	log    *slog.Logger

	cert   atomic.Pointer[tls.Certificate]
	synced atomic.Bool
}

func newCertManager(reader client.Reader, writer client.Writer, opts Options, log *slog.Logger) *certManager {
	return &certManager{
		reader: reader,
		writer: writer,
		opts:   opts,
		params: certParams{caTTL: opts.CATTL, certTTL: opts.CertTTL, dnsNames: opts.dnsNames(), ips: opts.IPAddresses},
		now:    time.Now,
		log:    log,
	}
}

// NeedLeaderElection: every replica serves the webhook, so every replica needs the
// certificate.
func (m *certManager) NeedLeaderElection() bool { return false }

// Start reconciles at once, then every resync period; after a failure it retries sooner,
// backing off up to the resync period. The certificate in use stays valid meanwhile (it
// is renewed when a third of its life is left).
func (m *certManager) Start(ctx context.Context) error {
	const minRetry = 500 * time.Millisecond
	retry := minRetry
	for {
		delay := m.opts.Resync
		if err := m.reconcile(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			m.log.Error("keep the injector webhook's certificate and configuration", "error", err, "retryIn", retry)
			delay, retry = retry, min(retry*2, m.opts.Resync)
		} else {
			retry = minRetry
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

// GetCertificate serves the current certificate to the webhook server.
func (m *certManager) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := m.cert.Load(); c != nil {
		return c, nil
	}
	return nil, errors.New("the injector webhook has no serving certificate yet")
}

// ready fails until the first certificate is served with its CA in the configuration;
// after that a failed renewal is logged and retried, not reported as unready, since the
// certificate in use stays valid for a third of its lifetime.
func (m *certManager) ready() error {
	if !m.synced.Load() {
		return errors.New("the injector webhook has no serving certificate in its configuration yet")
	}
	return nil
}

// reconcile brings the Secret and the configuration up to date, then serves the
// certificate: only once the configuration trusts its CA.
func (m *certManager) reconcile(ctx context.Context) error {
	mat, err := m.syncSecret(ctx)
	if err != nil {
		return err
	}
	if err := m.syncConfiguration(ctx, mat.bundlePEM()); err != nil {
		return err
	}
	if cur := m.cert.Load(); cur == nil || cur.Leaf.SerialNumber.Cmp(mat.leaf.SerialNumber) != 0 {
		m.cert.Store(mat.tlsCertificate())
		m.log.Info("serving the injector webhook's certificate", "serial", mat.leaf.SerialNumber.Text(16), "notAfter", mat.leaf.NotAfter.UTC())
	}
	m.synced.Store(true)
	return nil
}

func (m *certManager) syncSecret(ctx context.Context) (*material, error) {
	key := types.NamespacedName{Namespace: m.opts.Namespace, Name: m.opts.CertSecret}
	var sec corev1.Secret
	err := m.reader.Get(ctx, key, &sec)
	if apierrors.IsNotFound(err) {
		r, err := plan(nil, m.now(), m.params)
		if err != nil {
			return nil, err
		}
		data, err := r.next.encode()
		if err != nil {
			return nil, err
		}
		sec = corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name, Labels: map[string]string{managedByLabel: managedByValue}},
			Type:       corev1.SecretTypeTLS,
			Data:       data,
		}
		if err := m.writer.Create(ctx, &sec); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return nil, fmt.Errorf("create secret %s: another replica created it first; reading it next", key)
			}
			return nil, fmt.Errorf("create secret %s: %w", key, err)
		}
		m.log.Info(r.what, "secret", key.String())
		return r.next, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get secret %s: %w", key, err)
	}
	if sec.Labels[managedByLabel] != managedByValue {
		return nil, fmt.Errorf("secret %s was not created by Trellis (no label %s=%s); delete it and the control plane creates its own", key, managedByLabel, managedByValue)
	}
	cur, err := decode(sec.Data)
	if err != nil {
		m.log.Warn("the webhook's certificate Secret cannot be read; replacing its CA", "secret", key.String(), "error", err)
		cur = nil
	}
	r, err := plan(cur, m.now(), m.params)
	if err != nil {
		return nil, err
	}
	if r.what == "" {
		return r.next, nil
	}
	if sec.Data, err = r.next.encode(); err != nil {
		return nil, err
	}
	if err := m.writer.Update(ctx, &sec); err != nil {
		if apierrors.IsConflict(err) {
			return nil, fmt.Errorf("update secret %s: another replica changed it first; reading it next", key)
		}
		return nil, fmt.Errorf("update secret %s: %w", key, err)
	}
	m.log.Info(r.what, "secret", key.String(), "notAfter", r.next.leaf.NotAfter.UTC())
	return r.next, nil
}

// syncConfiguration creates the MutatingWebhookConfiguration, or puts back its webhooks
// when they differ from Configuration (a user's edit is undone: change the flags instead).
// An existing managed-by label is kept: the Helm chart installs the configuration with
// app.kubernetes.io/managed-by=Helm, which Helm needs to upgrade and uninstall it; only a
// missing label is set.
func (m *certManager) syncConfiguration(ctx context.Context, caBundle []byte) error {
	want := Configuration(m.opts, caBundle)
	var cur admissionregistrationv1.MutatingWebhookConfiguration
	err := m.reader.Get(ctx, types.NamespacedName{Name: want.Name}, &cur)
	if apierrors.IsNotFound(err) {
		var ns corev1.Namespace
		if err := m.reader.Get(ctx, types.NamespacedName{Name: m.opts.Namespace}, &ns); err == nil {
			want.OwnerReferences = []metav1.OwnerReference{ownerNamespace(&ns)}
		} else {
			m.log.Warn("the webhook configuration gets no owner: its namespace cannot be read", "namespace", m.opts.Namespace, "error", err)
		}
		if err := m.writer.Create(ctx, want); err != nil {
			return fmt.Errorf("create mutatingwebhookconfiguration %s: %w", want.Name, err)
		}
		m.log.Info("created the injector's webhook configuration", "name", want.Name, "failurePolicy", m.opts.FailurePolicy)
		return nil
	}
	if err != nil {
		return fmt.Errorf("get mutatingwebhookconfiguration %s: %w", want.Name, err)
	}
	if equality.Semantic.DeepEqual(cur.Webhooks, want.Webhooks) && cur.Labels[managedByLabel] != "" {
		return nil
	}
	cur.Webhooks = want.Webhooks
	if cur.Labels[managedByLabel] == "" {
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		cur.Labels[managedByLabel] = managedByValue
	}
	if err := m.writer.Update(ctx, &cur); err != nil {
		return fmt.Errorf("update mutatingwebhookconfiguration %s: %w", want.Name, err)
	}
	m.log.Info("updated the injector's webhook configuration", "name", want.Name)
	return nil
}
