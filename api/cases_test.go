package api_test

// invalidCases: one row per kind of bad input; each must be refused at admission with a
// message containing want.
var invalidCases = []struct {
	name string
	yaml string
	want string
}{
	// TrafficSplit
	{
		name: "a negative weight is refused",
		yaml: split(`{service: backend, backends: [{service: backend-v1, weight: -1}, {service: backend-v2, weight: 100}]}`),
		want: "spec.backends[0].weight in body should be greater than or equal to 0",
	},
	{
		name: "a split without backends is refused",
		yaml: split(`{service: backend, backends: []}`),
		want: "spec.backends in body should have at least 1 items",
	},
	{
		name: "a split with no backends field is refused",
		yaml: split(`{service: backend}`),
		want: "spec.backends: Required value",
	},
	{
		name: "a backend equal to the root service is refused",
		yaml: split(`{service: backend, backends: [{service: backend, weight: 90}, {service: backend-v2, weight: 10}]}`),
		want: "a backend cannot be the root service itself",
	},
	{
		name: "a backend listed twice is refused",
		yaml: split(`{service: backend, backends: [{service: backend-v1, weight: 50}, {service: backend-v1, weight: 50}]}`),
		want: "each backend service may be listed only once",
	},
	{
		name: "a split whose weights are all zero is refused",
		yaml: split(`{service: backend, backends: [{service: backend-v1, weight: 0}, {service: backend-v2, weight: 0}]}`),
		want: "at least one backend needs a weight above 0",
	},
	{
		name: "a root service that is not a Service name is refused",
		yaml: split(`{service: Backend.shop, backends: [{service: backend-v1, weight: 1}]}`),
		want: "must be the name of a Service in this namespace",
	},
	{
		name: "a match of an unknown kind is refused",
		yaml: split(`{service: backend, matches: [{kind: HTTPRoute, name: r}], backends: [{service: backend-v1, weight: 1}]}`),
		want: `spec.matches[0].kind: Unsupported value: "HTTPRoute": supported values: "HTTPRouteGroup"`,
	},

	// TrafficPolicy
	{
		name: "more than 10 retry attempts are refused",
		yaml: policy(`{targetRef: {name: backend}, retries: {attempts: 11}}`),
		want: "spec.retries.attempts in body should be less than or equal to 10",
	},
	{
		name: "negative retry attempts are refused",
		yaml: policy(`{targetRef: {name: backend}, retries: {attempts: -1}}`),
		want: "spec.retries.attempts in body should be greater than or equal to 0",
	},
	{
		name: "a malformed duration is refused",
		yaml: policy(`{targetRef: {name: backend}, timeouts: {request: 5 seconds}}`),
		want: `"5 seconds" is not a duration: write a number and a unit`,
	},
	{
		name: "a duration with a unit Go does not know is refused",
		yaml: policy(`{targetRef: {name: backend}, retries: {perTryTimeout: 2d}}`),
		want: `"2d" is not a duration`,
	},
	{
		name: "a per-try timeout longer than the request timeout is refused",
		yaml: policy(`{targetRef: {name: backend}, retries: {perTryTimeout: 10s}, timeouts: {request: 2s}}`),
		want: "retries.perTryTimeout is longer than timeouts.request",
	},
	{
		name: "a retry budget over 100 percent is refused",
		yaml: policy(`{targetRef: {name: backend}, retries: {budget: {percent: 150}}}`),
		want: "spec.retries.budget.percent in body should be less than or equal to 100",
	},
	{
		name: "a max ejection percentage over 100 is refused",
		yaml: policy(`{targetRef: {name: backend}, outlierDetection: {maxEjectionPercent: 101}}`),
		want: "spec.outlierDetection.maxEjectionPercent in body should be less than or equal to 100",
	},
	{
		name: "an unknown load balancer is refused",
		yaml: policy(`{targetRef: {name: backend}, loadBalancer: {type: Random}}`),
		want: `spec.loadBalancer.type: Unsupported value: "Random"`,
	},
	{
		name: "an unknown retry condition is refused",
		yaml: policy(`{targetRef: {name: backend}, retries: {retryOn: [timeout]}}`),
		want: `spec.retries.retryOn[0]: Unsupported value: "timeout"`,
	},
	{
		name: "a retry condition listed twice is refused",
		yaml: policy(`{targetRef: {name: backend}, retries: {retryOn: [5xx, 5xx]}}`),
		want: `spec.retries.retryOn[1]: Duplicate value: "5xx"`,
	},
	{
		name: "a policy aimed at something other than a Service is refused",
		yaml: policy(`{targetRef: {kind: Deployment, name: backend}, timeouts: {request: 1s}}`),
		want: `spec.targetRef.kind: Unsupported value: "Deployment"`,
	},
	{
		name: "a policy that sets nothing is refused",
		yaml: policy(`{targetRef: {name: backend}}`),
		want: "set at least one of retries, timeouts, connectionPool, outlierDetection or loadBalancer",
	},
	{
		name: "a zero outlier interval is refused",
		yaml: policy(`{targetRef: {name: backend}, outlierDetection: {interval: 0s}}`),
		want: "interval must be longer than 0s",
	},
	{
		name: "a zero connection limit is refused",
		yaml: policy(`{targetRef: {name: backend}, connectionPool: {maxConnections: 0}}`),
		want: "spec.connectionPool.maxConnections in body should be greater than or equal to 1",
	},

	// AuthorizationPolicy
	{
		name: "a selector with In and no values is refused because it selects nothing",
		yaml: authz(`{selector: {matchExpressions: [{key: app, operator: In, values: []}]}}`),
		want: "operators In and NotIn need at least one value",
	},
	{
		name: "a selector whose labels and expressions contradict is refused",
		yaml: authz(`{selector: {matchLabels: {app: backend}, matchExpressions: [{key: app, operator: In, values: [frontend]}]}}`),
		want: "matchLabels and matchExpressions contradict each other",
	},
	{
		name: "a selector requiring a label both to exist and not to exist is refused",
		yaml: authz(`{selector: {matchExpressions: [{key: app, operator: Exists}, {key: app, operator: DoesNotExist}]}}`),
		want: "matchExpressions contradict each other",
	},
	{
		name: "a selector with disjoint In sets on one key is refused",
		yaml: authz(`{selector: {matchExpressions: [{key: tier, operator: In, values: [web]}, {key: tier, operator: In, values: [db]}]}}`),
		want: "matchExpressions contradict each other",
	},
	{
		name: "a selector with an unknown operator is refused",
		yaml: authz(`{selector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}}`),
		want: `spec.selector.matchExpressions[0].operator: Unsupported value: "Equals"`,
	},
	{
		name: "a selector label value that no pod can carry is refused",
		yaml: authz(`{selector: {matchLabels: {app: "not a label"}}}`),
		want: "label values are at most 63 letters",
	},
	{
		name: "a source naming two kinds of caller is refused",
		yaml: authz(`{selector: {}, rules: [{from: [{namespace: shop, identity: "spiffe://cluster.local/ns/shop/sa/a"}]}]}`),
		want: "set exactly one of serviceAccount, namespace or identity",
	},
	{
		name: "an empty source is refused",
		yaml: authz(`{selector: {}, rules: [{from: [{}]}]}`),
		want: "set exactly one of serviceAccount, namespace or identity",
	},
	{
		name: "a rule with no callers is refused",
		yaml: authz(`{selector: {}, rules: [{from: []}]}`),
		want: "spec.rules[0].from in body should have at least 1 items",
	},
	{
		name: "an identity that is not a SPIFFE ID is refused",
		yaml: authz(`{selector: {}, rules: [{from: [{identity: "https://cluster.local/ns/shop/sa/a"}]}]}`),
		want: "must be a SPIFFE ID such as spiffe://cluster.local/ns/shop/sa/frontend",
	},
	{
		name: "port 0 is refused",
		yaml: authz(`{selector: {}, rules: [{from: [{namespace: shop}], ports: [0]}]}`),
		want: "spec.rules[0].ports[0] in body should be greater than or equal to 1",
	},
	{
		name: "a port above 65535 is refused",
		yaml: authz(`{selector: {}, rules: [{from: [{namespace: shop}], ports: [70000]}]}`),
		want: "spec.rules[0].ports[0] in body should be less than or equal to 65535",
	},

	// MeshConfig
	{
		name: "a MeshConfig not named default is refused",
		yaml: "apiVersion: policy.trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {}\n",
		want: `the MeshConfig must be named "default"`,
	},
	{
		name: "an unknown mTLS mode is refused",
		yaml: meshConfig(`{mtls: {mode: DISABLE}}`),
		want: `spec.mtls.mode: Unsupported value: "DISABLE": supported values: "PERMISSIVE", "STRICT"`,
	},
	{
		name: "a namespace overridden twice is refused",
		yaml: meshConfig(`{mtls: {namespaceOverrides: [{namespace: shop, mode: STRICT}, {namespace: shop, mode: PERMISSIVE}]}}`),
		want: "spec.mtls.namespaceOverrides[1]: Duplicate value",
	},
	{
		name: "a trust domain with uppercase letters is refused",
		yaml: meshConfig(`{trustDomain: Cluster.Local}`),
		want: "a trust domain may hold only lowercase letters",
	},
}

// defaultCases: what the apiserver fills in, as docs/crds/ promises.
var defaultCases = []struct {
	name     string
	yaml     string
	wantSpec string
}{
	{
		name:     "an empty MeshConfig is permissive in trust domain cluster.local",
		yaml:     meshConfig(`{}`),
		wantSpec: `spec: {trustDomain: cluster.local, mtls: {mode: PERMISSIVE}}`,
	},
	{
		name: "empty retries retry twice on connection and gateway failures within a 20% budget",
		yaml: policy(`{targetRef: {name: backend}, retries: {}}`),
		wantSpec: `spec:
  targetRef: {kind: Service, name: backend}
  retries:
    attempts: 2
    retryOn: [connect-failure, refused-stream, unavailable, cancelled, gateway-error]
    budget: {percent: 20, minRetriesPerSecond: 10, window: 10s}`,
	},
	{
		name: "empty outlier detection ejects after 5 failures for 30s, at most 10%",
		yaml: policy(`{targetRef: {name: backend}, outlierDetection: {}}`),
		wantSpec: `spec:
  targetRef: {kind: Service, name: backend}
  outlierDetection: {consecutive5xxErrors: 5, consecutiveConnectFailures: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 10}`,
	},
	{
		name:     "an empty load balancer is P2C over EWMA latency",
		yaml:     policy(`{targetRef: {name: backend}, loadBalancer: {}}`),
		wantSpec: `spec: {targetRef: {kind: Service, name: backend}, loadBalancer: {type: P2CEWMA}}`,
	},
}

func split(spec string) string {
	return "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: t, namespace: shop}\nspec: " + spec + "\n"
}

func policy(spec string) string {
	return "apiVersion: policy.trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: t, namespace: shop}\nspec: " + spec + "\n"
}

func authz(spec string) string {
	return "apiVersion: policy.trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: t, namespace: shop}\nspec: " + spec + "\n"
}

func meshConfig(spec string) string {
	return "apiVersion: policy.trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\nspec: " + spec + "\n"
}
