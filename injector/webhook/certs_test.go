package webhook

import (
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"
)

func testParams() certParams {
	return certParams{
		caTTL:    300 * 24 * time.Hour,
		certTTL:  30 * 24 * time.Hour,
		dnsNames: []string{"trellis-controlplane.trellis-system.svc", "trellis-controlplane.trellis-system"},
		ips:      []net.IP{net.IPv4(127, 0, 0, 1)},
	}
}

func mustPlan(t *testing.T, cur *material, now time.Time, p certParams) renewal {
	t.Helper()
	r, err := plan(cur, now, p)
	if err != nil {
		t.Fatal(err)
	}
	// Whatever is planned survives the Secret.
	data, err := r.next.encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := decode(data)
	if err != nil {
		t.Fatalf("decode what was encoded: %v", err)
	}
	if len(back.cas) != len(r.next.cas) || !back.leaf.Equal(r.next.leaf) {
		t.Fatal("the Secret round trip lost material")
	}
	return r
}

// verifies reports whether the bundle trusts the leaf at now, as the apiserver would.
func verifies(m *material, now time.Time) error {
	pool := x509.NewCertPool()
	for _, ca := range m.cas {
		pool.AddCert(ca)
	}
	_, err := m.leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, DNSName: "trellis-controlplane.trellis-system.svc"})
	return err
}

func TestPlanRenewsBeforeExpiry(t *testing.T) {
	p := testParams()
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour

	created := mustPlan(t, nil, t0, p)
	if created.what == "" || len(created.next.cas) != 1 {
		t.Fatalf("first plan: %q with %d CAs", created.what, len(created.next.cas))
	}
	if err := verifies(created.next, t0); err != nil {
		t.Fatalf("a fresh certificate does not verify: %v", err)
	}

	t.Run("nothing changes while more than a third of the lifetimes is left", func(t *testing.T) {
		r := mustPlan(t, created.next, t0.Add(19*day), p)
		if r.what != "" {
			t.Errorf("plan at day 19: %q, want nothing", r.what)
		}
	})

	t.Run("the serving certificate is renewed from the same CA when a third is left", func(t *testing.T) {
		r := mustPlan(t, created.next, t0.Add(21*day), p)
		if r.what != "renewed the serving certificate" || r.next.leaf.Equal(created.next.leaf) || r.next.cas[0] != created.next.cas[0] {
			t.Fatalf("plan at day 21: %q", r.what)
		}
		if err := verifies(r.next, t0.Add(21*day)); err != nil {
			t.Error(err)
		}
	})

	t.Run("the serving certificate is renewed when its names change", func(t *testing.T) {
		q := p
		q.dnsNames = append([]string{"injector.example"}, q.dnsNames...)
		r := mustPlan(t, created.next, t0.Add(day), q)
		if r.what != "renewed the serving certificate" || r.next.leaf.DNSNames[0] != "injector.example" {
			t.Fatalf("plan with a new name: %q, names %v", r.what, r.next.leaf.DNSNames)
		}
	})

	t.Run("a new CA is trusted first and signs a serving certificate only on the next plan", func(t *testing.T) {
		// Keep the serving certificate fresh up to day 201, when a third of the CA is left.
		cur := created.next
		now := t0
		for now.Before(t0.Add(195 * day)) {
			now = now.Add(10 * day)
			cur = mustPlan(t, cur, now, p).next
		}
		old := cur.cas[0]
		if len(cur.cas) != 1 {
			t.Fatalf("%d CAs before the CA's renewal", len(cur.cas))
		}
		now = t0.Add(201 * day)
		phase1 := mustPlan(t, cur, now, p)
		if !strings.Contains(phase1.what, "issued a new webhook CA") || len(phase1.next.cas) != 2 || phase1.next.cas[1] != old {
			t.Fatalf("phase 1: %q with %d CAs", phase1.what, len(phase1.next.cas))
		}
		if !phase1.next.leaf.Equal(cur.leaf) {
			t.Error("phase 1 replaced the serving certificate before the new CA could be trusted")
		}
		if err := verifies(phase1.next, now); err != nil {
			t.Errorf("phase 1: %v", err)
		}
		phase2 := mustPlan(t, phase1.next, now.Add(time.Minute), p)
		if phase2.what != "renewed the serving certificate" || phase2.next.leaf.CheckSignatureFrom(phase2.next.cas[0]) != nil {
			t.Fatalf("phase 2: %q", phase2.what)
		}
		if err := verifies(phase2.next, now.Add(time.Minute)); err != nil {
			t.Errorf("phase 2: %v", err)
		}
		// Once the old CA has expired it leaves the bundle.
		later := old.NotAfter.Add(time.Hour)
		cur = phase2.next
		for now.Before(later) {
			now = now.Add(10 * day)
			cur = mustPlan(t, cur, now, p).next
		}
		if len(cur.cas) != 1 || cur.cas[0] == old {
			t.Errorf("after the old CA expired the bundle holds %d CAs", len(cur.cas))
		}
	})

	t.Run("a serving certificate never outlives its CA", func(t *testing.T) {
		q := p
		q.certTTL = 99 * day
		r := mustPlan(t, nil, t0, q)
		if r.next.leaf.NotAfter.After(r.next.cas[0].NotAfter) {
			t.Errorf("leaf until %s, CA until %s", r.next.leaf.NotAfter, r.next.cas[0].NotAfter)
		}
	})
}

func TestDecodeRefusesAMismatchedCAKey(t *testing.T) {
	a := mustPlan(t, nil, time.Now(), testParams())
	b := mustPlan(t, nil, time.Now(), testParams())
	data, err := a.next.encode()
	if err != nil {
		t.Fatal(err)
	}
	other, err := b.next.encode()
	if err != nil {
		t.Fatal(err)
	}
	data[keyCAKey] = other[keyCAKey]
	if _, err := decode(data); err == nil || !strings.Contains(err.Error(), "is not the key of the first certificate") {
		t.Errorf("decode with another CA's key: %v", err)
	}
}
