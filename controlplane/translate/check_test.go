package translate

import (
	"errors"
	"fmt"
	"slices"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// checkResources asserts what every successful Build must give: a consistent go-control-plane
// snapshot, resources that pass Envoy's own validation rules (typed configs included), and
// lists sorted by unique names.
func checkResources(res *Resources) error {
	snap, err := snapshotOf(res)
	if err != nil {
		return fmt.Errorf("new snapshot: %w", err)
	}
	if err := snap.Consistent(); err != nil {
		return fmt.Errorf("snapshot is not consistent: %w", err)
	}
	var errs []error
	for typeURL, list := range resourceLists(res) {
		var names []string
		for _, r := range list {
			name := cachev3.GetResourceName(r)
			names = append(names, name)
			if err := validateDeep(r); err != nil {
				errs = append(errs, fmt.Errorf("%s %q: %w", typeURL, name, err))
			}
		}
		if !slices.IsSorted(names) {
			errs = append(errs, fmt.Errorf("%s: names not sorted: %q", typeURL, names))
		}
		if len(slices.Compact(slices.Clone(names))) != len(names) {
			errs = append(errs, fmt.Errorf("%s: duplicate names: %q", typeURL, names))
		}
	}
	return errors.Join(errs...)
}

// checkHalves asserts what the xDS server relies on to check consistency once per State
// instead of once per proxy: the shared outbound half and the proxy's inbound half are each
// consistent on their own, and no name appears in both.
func checkHalves(b *Builder, p Proxy) error {
	out, err := b.Outbound()
	if err != nil {
		return err
	}
	in, err := b.Inbound(p)
	if err != nil {
		return err
	}
	var errs []error
	for half, res := range map[string]*Resources{"outbound": out, "inbound": in} {
		snap, err := snapshotOf(res)
		if err == nil {
			err = snap.Consistent()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("the %s half alone is not consistent: %w", half, err))
		}
	}
	outLists, inLists := resourceLists(out), resourceLists(in)
	for typeURL, list := range inLists {
		for _, r := range list {
			name := cachev3.GetResourceName(r)
			for _, o := range outLists[typeURL] {
				if cachev3.GetResourceName(o) == name {
					errs = append(errs, fmt.Errorf("%s %q is in both halves", typeURL, name))
				}
			}
		}
	}
	return errors.Join(errs...)
}

func snapshotOf(res *Resources) (*cachev3.Snapshot, error) {
	return cachev3.NewSnapshot("1", resourceLists(res))
}

func resourceLists(res *Resources) map[resourcev3.Type][]types.Resource {
	return map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: asResources(res.Listeners),
		resourcev3.RouteType:    asResources(res.Routes),
		resourcev3.ClusterType:  asResources(res.Clusters),
		resourcev3.EndpointType: asResources(res.Endpoints),
	}
}

func asResources[T types.Resource](list []T) []types.Resource {
	out := make([]types.Resource, len(list))
	for i, r := range list {
		out[i] = r
	}
	return out
}

// validateDeep runs the protoc-gen-validate rules of a message and of every typed config
// inside it, which ValidateAll alone does not open.
func validateDeep(m proto.Message) error {
	var errs []error
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, err)
		}
	}
	walkAnys(m.ProtoReflect(), func(a *anypb.Any) {
		inner, err := a.UnmarshalNew()
		if err != nil {
			errs = append(errs, fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err))
			return
		}
		if err := validateDeep(inner); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
		}
	})
	return errors.Join(errs...)
}

// walkAnys calls fn for every Any directly or indirectly in m (not inside other Anys).
func walkAnys(m protoreflect.Message, fn func(*anypb.Any)) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		fn(a)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				walkAnys(mv.Message(), fn)
				return true
			})
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			for i := 0; i < v.List().Len(); i++ {
				walkAnys(v.List().Get(i).Message(), fn)
			}
		case !fd.IsMap() && !fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			walkAnys(v.Message(), fn)
		}
		return true
	})
}
