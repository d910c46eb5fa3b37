package xds

import (
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
)

// hasher gives each resource list a content version, so that a proxy is sent only the
// resource types whose content changed, and two replicas agree on versions. Resources that
// many proxies share (the outbound side) are the same pointers, so each is marshalled once
// per rebuild.
type hasher struct {
	memo sync.Map // types.Resource → uint64
}

var marshal = proto.MarshalOptions{Deterministic: true}

func (h *hasher) resource(r types.Resource) uint64 {
	if v, ok := h.memo.Load(r); ok {
		return v.(uint64)
	}
	b, err := marshal.Marshal(r)
	if err != nil {
		// Cannot happen for well-formed messages; a constant still yields a valid version.
		b = nil
	}
	v := xxhash.Sum64(b)
	h.memo.Store(r, v)
	return v
}

// version combines the hashes of a resource list, in order.
func (h *hasher) version(rs []types.Resource) string {
	d := xxhash.New()
	var buf [8]byte
	for _, r := range rs {
		v := h.resource(r)
		for i := range buf {
			buf[i] = byte(v >> (8 * i))
		}
		_, _ = d.Write(buf[:])
	}
	return formatHash(d.Sum64())
}

func formatHash(v uint64) string {
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := 15; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b[:])
}
