package identity

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Audience is the audience a sidecar's projected ServiceAccount token must be issued for to
// be accepted by the CA. A token for any other audience (the API server's included) is
// refused, so a token stolen from the CA cannot be replayed to the API server and vice versa.
const Audience = "trellis-ca"

// ErrInvalidToken is wrapped by every refusal of a token (as opposed to a failure to ask the
// API server about it).
var ErrInvalidToken = errors.New("ServiceAccount token refused")

const saUsernamePrefix = "system:serviceaccount:"

// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create

// KubeTokenReviewer checks ServiceAccount tokens with the Kubernetes TokenReview API
// (authentication.k8s.io/v1), for the audience [Audience].
type KubeTokenReviewer struct {
	client client.Client
}

// NewKubeTokenReviewer returns a reviewer that creates TokenReviews with c.
func NewKubeTokenReviewer(c client.Client) *KubeTokenReviewer {
	return &KubeTokenReviewer{client: c}
}

// Review asks the API server whether token is a valid ServiceAccount token for [Audience],
// and returns the ServiceAccount it names. A refused token yields an error wrapping
// [ErrInvalidToken]; any other error means the API server could not be asked. No error
// contains the token.
func (r *KubeTokenReviewer) Review(ctx context.Context, token string) (namespace, serviceAccount string, err error) {
	if strings.TrimSpace(token) == "" {
		return "", "", fmt.Errorf("%w: the token is empty", ErrInvalidToken)
	}
	review := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{Audience}}}
	if err := r.client.Create(ctx, review); err != nil {
		return "", "", fmt.Errorf("create TokenReview: %w", redactError(err, token))
	}
	st := review.Status
	switch {
	case st.Error != "":
		return "", "", fmt.Errorf("%w: the API server says: %s", ErrInvalidToken, redact(st.Error, token))
	case !st.Authenticated:
		return "", "", fmt.Errorf("%w: the API server did not authenticate it", ErrInvalidToken)
	case !slices.Contains(st.Audiences, Audience):
		return "", "", fmt.Errorf("%w: it is not valid for audience %q: project the token with `audience: %s`", ErrInvalidToken, Audience, Audience)
	}
	namespace, serviceAccount, err = parseServiceAccountUser(st.User)
	if err != nil {
		return "", "", fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	return namespace, serviceAccount, nil
}

// parseServiceAccountUser accepts only a ServiceAccount user,
// system:serviceaccount:<namespace>:<name>, in the groups the ServiceAccount authenticator
// always sets; other authenticators (OIDC, webhooks) are not trusted to name a workload.
func parseServiceAccountUser(u authnv1.UserInfo) (namespace, name string, err error) {
	rest, ok := strings.CutPrefix(u.Username, saUsernamePrefix)
	if !ok {
		return "", "", fmt.Errorf("user %q is not a ServiceAccount: use the pod's projected ServiceAccount token", u.Username)
	}
	namespace, name, ok = strings.Cut(rest, ":")
	if !ok || strings.Contains(name, ":") {
		return "", "", fmt.Errorf("user %q is not of the form %s<namespace>:<name>", u.Username, saUsernamePrefix)
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return "", "", fmt.Errorf("user %q: namespace %q is not a valid name: %s", u.Username, namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", "", fmt.Errorf("user %q: ServiceAccount name %q is not a valid name: %s", u.Username, name, strings.Join(errs, "; "))
	}
	if group := "system:serviceaccounts:" + namespace; !slices.Contains(u.Groups, group) {
		return "", "", fmt.Errorf("user %q is not in group %q, so it was not authenticated as a ServiceAccount", u.Username, group)
	}
	return namespace, name, nil
}

// redactError hides token in err's message, keeping the error chain when nothing is hidden.
func redactError(err error, token string) error {
	if token == "" || !strings.Contains(err.Error(), token) {
		return err
	}
	return errors.New(redact(err.Error(), token))
}

func redact(s, token string) string {
	if token == "" {
		return s
	}
	return strings.ReplaceAll(s, token, "<redacted token>")
}
