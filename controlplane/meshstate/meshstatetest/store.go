package meshstatetest

import "github.com/trellis-mesh/trellis/controlplane/meshstate"

// NewStore is a store holding every object of st, written as the controllers would.
func NewStore(st *meshstate.State) *meshstate.Store {
	store := meshstate.NewStore()
	store.SetMesh(st.Mesh)
	for _, v := range st.Namespaces {
		store.SetNamespace(v)
	}
	for _, v := range st.Services {
		store.SetService(v)
	}
	for _, v := range st.EndpointSlices {
		store.SetEndpointSlice(v)
	}
	for _, v := range st.Pods {
		store.SetPod(v)
	}
	for _, v := range st.Splits {
		store.SetSplit(v)
	}
	for _, v := range st.TrafficPolicies {
		store.SetTrafficPolicy(v)
	}
	for _, v := range st.AuthorizationPolicies {
		store.SetAuthorizationPolicy(v)
	}
	return store
}
