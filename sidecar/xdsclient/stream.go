package xdsclient

import (
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

const (
	// maxErrorDetail bounds the error a NACK carries.
	maxErrorDetail = 8 << 10
	// maxNACKDelay bounds how long the NACK of a version the control plane resends at once
	// waits (it will not send a fix for that type before the NACK).
	maxNACKDelay = 5 * time.Second
)

// stream is the state of one ADS stream. Responses are handled one at a time on Run's
// goroutine:
//
//   - A response is decoded and each resource checked on its own; a bad one is NACKed at
//     once (with the version last accepted, as the protocol says).
//   - Otherwise it is held, unacknowledged, until the resources it and the accepted ones
//     name are all there: RDS routes for the listeners, EDS assignments for the clusters,
//     clusters for the routes and listeners. Then the whole set is linked into a Config;
//     if that works every held response is ACKed and the Config delivered, else the held
//     responses the errors name are NACKed.
//   - A response still waiting after ReferenceGrace is NACKed: the control plane named a
//     resource it does not send.
//
// Holding rather than ACKing at once means a response is never acknowledged before the
// sidecar can use it, and an update that removes a cluster ahead of the routes that use it
// (the ADS order is clusters, endpoints, listeners, routes) waits for those routes instead
// of being refused.
type stream struct {
	c    *Client
	grpc discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient

	held  map[string]*pending // by type URL
	nonce map[string]string   // of the latest response, by type URL
	// names are the route and endpoint names asked for; subscribing is set once asked, and
	// unsure while a change of names may have crossed a response of the old ones (the
	// server ignores a request whose nonce is not its latest).
	names       map[string][]string
	subscribing map[string]bool
	unsure      map[string]bool
	// rejected is the version last NACKed by type, nacks how many times in a row; a NACK of
	// the same version again waits in delayed, so that a control plane that resends a bad
	// version at once is not answered in a tight loop.
	rejected map[string]string
	nacks    map[string]int
	delayed  map[string]*delayedNACK
}

// pending is a response held until what it refers to has arrived.
type pending struct {
	version, nonce string
	set            resourceSet       // only the field of its type is set
	hashes         map[string]uint64 // of each resource's bytes, by name
	since          time.Time
}

type delayedNACK struct {
	at    time.Time
	nonce string
	err   error
}

func newStream(c *Client, g discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient) *stream {
	return &stream{
		c: c, grpc: g,
		held: map[string]*pending{}, nonce: map[string]string{},
		names: map[string][]string{}, subscribing: map[string]bool{}, unsure: map[string]bool{},
		rejected: map[string]string{}, nacks: map[string]int{}, delayed: map[string]*delayedNACK{},
	}
}

// request sends a request for one type: the names asked for, the version applied, the
// nonce of the response it answers, and for a NACK the error. Any request answers the
// latest response, so it replaces a delayed NACK.
func (st *stream) request(typeURL, version, nonce string, nack error) error {
	req := &discovery.DiscoveryRequest{
		Node:          st.c.node(),
		TypeUrl:       typeURL,
		VersionInfo:   version,
		ResponseNonce: nonce,
		ResourceNames: st.names[typeURL],
	}
	if nack != nil {
		msg := nack.Error()
		if len(msg) > maxErrorDetail {
			msg = strings.ToValidUTF8(msg[:maxErrorDetail], "") + "…" // proto strings are UTF-8
		}
		req.ErrorDetail = status.New(codes.InvalidArgument, msg).Proto()
	}
	delete(st.delayed, typeURL)
	if nonce == st.nonce[typeURL] {
		st.unsure[typeURL] = false
	}
	return st.grpc.Send(req)
}

func (st *stream) onResponse(resp *discovery.DiscoveryResponse, now time.Time) error {
	t := resp.GetTypeUrl()
	if !slices.Contains(typeOrder, t) {
		st.c.log.Warn("ignoring an xDS response of a type the sidecar does not ask for", "type", t)
		return nil
	}
	st.nonce[t] = resp.GetNonce()
	delete(st.held, t) // a response replaces the one held before it
	st.c.status.typ(t, func(ts *TypeStatus) { ts.Nonce = resp.GetNonce() })
	set, hashes, err := decode(resp)
	if err != nil {
		return st.reject(t, resp.GetVersionInfo(), resp.GetNonce(), err, now)
	}
	st.held[t] = &pending{version: resp.GetVersionInfo(), nonce: resp.GetNonce(), set: set, hashes: hashes, since: now}
	st.c.status.typ(t, func(ts *TypeStatus) { ts.Pending = resp.GetVersionInfo() })
	return st.evaluate(now)
}

// candidate is the accepted resources with the held ones in their place. A listener or
// cluster response replaces all of its type; a route or endpoint response replaces the
// resources it lists, and those it does not list stay while they are asked for (the xDS
// protocol lets a server send only the route configurations and assignments that changed).
func (st *stream) candidate() *resourceSet {
	s := st.c.acc
	for t, p := range st.held {
		switch t {
		case resourcev3.ListenerType:
			s.listeners = p.set.listeners
		case resourcev3.RouteType:
			s.routes = merge(s.routes, p.set.routes, st.asked(t))
		case resourcev3.ClusterType:
			s.clusters = p.set.clusters
		case resourcev3.EndpointType:
			s.endpoints = merge(s.endpoints, p.set.endpoints, st.asked(t))
		}
	}
	return &s
}

// incremental says whether a response of the type may list only some of its resources.
func incremental(t string) bool { return t == resourcev3.RouteType || t == resourcev3.EndpointType }

// asked says whether a route or endpoint name is still asked for; every name is until the
// stream asked for some.
func (st *stream) asked(t string) func(string) bool {
	if !st.subscribing[t] {
		return func(string) bool { return true }
	}
	names := st.names[t] // sorted
	return func(n string) bool {
		_, ok := slices.BinarySearch(names, n)
		return ok
	}
}

// merge is acc with upd's entries in their place, keeping only the names keep accepts.
func merge[V any](acc, upd map[string]V, keep func(string) bool) map[string]V {
	out := make(map[string]V, len(acc)+len(upd))
	for n, v := range acc {
		if keep(n) {
			out[n] = v
		}
	}
	for n, v := range upd {
		if keep(n) {
			out[n] = v
		}
	}
	return out
}

// evaluate applies the held responses if they make a complete set, NACKs those a link
// error names, and otherwise waits (asking for what the listeners and clusters name).
func (st *stream) evaluate(now time.Time) error {
	for len(st.held) > 0 {
		if err := st.follow(st.candidate()); err != nil {
			return err
		}
		cand := st.candidate()
		if miss := cand.missing(); len(miss) > 0 {
			st.setWaiting(miss)
			// A held route or endpoint response may answer names asked for before the
			// latest change, in a request the server ignored: ask again.
			for _, t := range []string{resourcev3.RouteType, resourcev3.EndpointType} {
				if st.held[t] != nil && st.unsure[t] {
					delete(st.held, t)
					if err := st.request(t, st.c.accVer[t], st.nonce[t], nil); err != nil {
						return err
					}
				}
			}
			return nil
		}
		if len(st.held) == 0 {
			break
		}
		cfg, err := cand.link()
		if err == nil {
			return st.accept(cand, cfg)
		}
		for _, t := range blame(err, st.held) {
			p := st.held[t]
			delete(st.held, t)
			if err := st.reject(t, p.version, p.nonce, err, now); err != nil {
				return err
			}
		}
	}
	st.setWaiting(nil)
	return nil
}

// follow asks for the routes the candidate's listeners name and the endpoints its clusters
// need, when they changed. A held response of that type is dropped: the server answers
// the new names with the current version.
func (st *stream) follow(cand *resourceSet) error {
	for _, f := range []struct {
		typeURL string
		names   []string
	}{{resourcev3.RouteType, cand.routeNames()}, {resourcev3.EndpointType, cand.edsNames()}} {
		if slices.Equal(st.names[f.typeURL], f.names) && (st.subscribing[f.typeURL] || len(f.names) == 0) {
			continue
		}
		st.names[f.typeURL] = f.names
		first := !st.subscribing[f.typeURL]
		st.subscribing[f.typeURL] = true
		st.c.status.typ(f.typeURL, func(ts *TypeStatus) { ts.Subscribed = f.names })
		delete(st.held, f.typeURL)
		var nack error
		if d := st.delayed[f.typeURL]; d != nil {
			nack = d.err
		}
		if err := st.request(f.typeURL, st.c.accVer[f.typeURL], st.nonce[f.typeURL], nack); err != nil {
			return err
		}
		// Sent with the latest nonce we have: a response already on its way (there can be
		// one once the type was asked for before) makes the server ignore it.
		st.unsure[f.typeURL] = !first
	}
	return nil
}

// accept ACKs every held response and delivers the Config.
func (st *stream) accept(cand *resourceSet, cfg *config.Config) error {
	for _, t := range typeOrder {
		p := st.held[t]
		if p == nil {
			continue
		}
		delete(st.held, t)
		hashes := p.hashes
		if incremental(t) {
			hashes = merge(st.c.hashes[t], p.hashes, st.asked(t))
		}
		st.c.accVer[t], st.c.have[t], st.c.hashes[t] = p.version, true, hashes
		st.rejected[t], st.nacks[t] = "", 0
		n := len(cand.names(t))
		st.c.status.typ(t, func(ts *TypeStatus) { ts.Version, ts.Resources, ts.Pending = p.version, n, "" })
		if err := st.request(t, p.version, p.nonce, nil); err != nil {
			return err
		}
	}
	st.c.acc = *cand
	st.setWaiting(nil)
	st.c.publish(cfg)
	return nil
}

// reject NACKs a response, at once the first time a version is rejected and after a
// growing delay when the control plane sends the same version again.
func (st *stream) reject(t, version, nonce string, err error, now time.Time) error {
	st.c.status.typ(t, func(ts *TypeStatus) {
		ts.LastError, ts.LastErrorVersion, ts.LastErrorTime, ts.Pending = err.Error(), version, now, ""
	})
	if version != "" && st.rejected[t] == version {
		delay := min(st.c.opts.Backoff.delay(st.nacks[t]), maxNACKDelay)
		st.c.log.Debug("rejected the same update again", "type", kindOf(t), "version", version, "nackIn", delay)
		st.delayed[t] = &delayedNACK{at: now.Add(delay), nonce: nonce, err: err}
		st.nacks[t]++
		return nil
	}
	st.c.log.Warn("rejected an update from the control plane; the last good configuration stays in effect",
		"type", kindOf(t), "version", version, "error", err)
	st.rejected[t], st.nacks[t] = version, 0
	return st.request(t, st.c.accVer[t], nonce, err)
}

// blame lists the held types an error names; all held types when it names none of them.
func blame(err error, held map[string]*pending) []string {
	var out []string
	for _, re := range resourceErrors(err) {
		if held[re.TypeURL] != nil && !slices.Contains(out, re.TypeURL) {
			out = append(out, re.TypeURL)
		}
	}
	if len(out) == 0 {
		out = slices.Collect(maps.Keys(held))
	}
	slices.SortFunc(out, func(a, b string) int { return slices.Index(typeOrder, a) - slices.Index(typeOrder, b) })
	return out
}

// nextDeadline is when onTimer must run: a delayed NACK is due or a held response has
// waited ReferenceGrace.
func (st *stream) nextDeadline() (time.Time, bool) {
	var next time.Time
	for _, d := range st.delayed {
		if next.IsZero() || d.at.Before(next) {
			next = d.at
		}
	}
	for _, p := range st.held {
		if at := p.since.Add(st.c.opts.ReferenceGrace); next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next, !next.IsZero()
}

func (st *stream) onTimer(now time.Time) error {
	for _, t := range typeOrder {
		if d := st.delayed[t]; d != nil && !d.at.After(now) {
			if err := st.request(t, st.c.accVer[t], d.nonce, d.err); err != nil {
				return err
			}
		}
	}
	var expired []string
	for _, t := range typeOrder {
		if p := st.held[t]; p != nil && !p.since.Add(st.c.opts.ReferenceGrace).After(now) {
			expired = append(expired, t)
		}
	}
	if len(expired) == 0 {
		return nil
	}
	// Blame the held responses on either side of a reference that does not resolve.
	miss := st.candidate().missing()
	var blamed []string
	for _, t := range expired {
		for _, m := range miss {
			if m.fromType == t || m.toType == t {
				blamed = append(blamed, t)
				break
			}
		}
	}
	if len(blamed) == 0 {
		blamed = expired
	}
	err := fmt.Errorf("waited %s for resources that never came: %s; the control plane must send every resource another names", st.c.opts.ReferenceGrace, describe(miss))
	for _, t := range blamed {
		p := st.held[t]
		delete(st.held, t)
		if err := st.reject(t, p.version, p.nonce, err, now); err != nil {
			return err
		}
	}
	return st.evaluate(now)
}

func (st *stream) setWaiting(miss []missingRef) {
	var w []string
	for _, m := range miss {
		w = append(w, m.String())
	}
	st.c.status.update(func(s *Status) { s.Waiting = w })
}

func describe(miss []missingRef) string {
	const most = 10
	var parts []string
	for i, m := range miss {
		if i == most {
			parts = append(parts, fmt.Sprintf("and %d more", len(miss)-most))
			break
		}
		parts = append(parts, m.String())
	}
	return strings.Join(parts, "; ")
}

// digestSeed keys the resource digests, which are only compared within the process.
var digestSeed = maphash.MakeSeed()

// decode unpacks and checks the resources of a response on their own. The set holds only
// the response's type; the hashes identify each resource's content, by name.
func decode(resp *discovery.DiscoveryResponse) (resourceSet, map[string]uint64, error) {
	var errs errorList
	var s resourceSet
	hashes := map[string]uint64{}
	t := resp.GetTypeUrl()
	switch t {
	case resourcev3.ListenerType:
		list := unpackAll(&errs, resp, hashes, (*listenerv3.Listener).GetName, func() *listenerv3.Listener { return &listenerv3.Listener{} })
		s.listeners = parseAll(&errs, t, list, (*listenerv3.Listener).GetName, parseListener)
	case resourcev3.RouteType:
		list := unpackAll(&errs, resp, hashes, (*routev3.RouteConfiguration).GetName, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} })
		s.routes = parseAll(&errs, t, list, (*routev3.RouteConfiguration).GetName, parseRouteConfig)
	case resourcev3.ClusterType:
		list := unpackAll(&errs, resp, hashes, (*clusterv3.Cluster).GetName, func() *clusterv3.Cluster { return &clusterv3.Cluster{} })
		s.clusters = parseAll(&errs, t, list, (*clusterv3.Cluster).GetName, parseCluster)
	case resourcev3.EndpointType:
		list := unpackAll(&errs, resp, hashes, (*endpointv3.ClusterLoadAssignment).GetClusterName, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} })
		s.endpoints = parseAll(&errs, t, list, (*endpointv3.ClusterLoadAssignment).GetClusterName, parseLoadAssignment)
	}
	return s, hashes, errs.join()
}

// unpackAll unpacks the resources of a response (also when wrapped in a discovery
// Resource, as servers do for TTLs), recording the hash of each one's bytes by name.
func unpackAll[M proto.Message](errs *errorList, resp *discovery.DiscoveryResponse, hashes map[string]uint64, name func(M) string, newM func() M) []M {
	var out []M
	var h maphash.Hash
	h.SetSeed(digestSeed)
	for i, a := range resp.GetResources() {
		if a.MessageName() == fullName(&discovery.Resource{}) {
			wrapped := &discovery.Resource{}
			if err := a.UnmarshalTo(wrapped); err != nil {
				errs.add(resp.GetTypeUrl(), fmt.Sprintf("resources[%d]", i), fmt.Errorf("malformed: %w", err))
				continue
			}
			a = wrapped.GetResource()
		}
		m := newM()
		if err := unpackResource(a, m); err != nil {
			errs.add(resp.GetTypeUrl(), fmt.Sprintf("resources[%d]", i), err)
			continue
		}
		h.Reset()
		h.WriteString(a.GetTypeUrl())
		h.WriteByte(0)
		h.Write(a.GetValue())
		hashes[name(m)] = h.Sum64() // a duplicate name is parseAll's error to report
		out = append(out, m)
	}
	return out
}

func unpackResource(a *anypb.Any, m proto.Message) error {
	if a == nil {
		return errors.New("empty resource")
	}
	if a.MessageName() != fullName(m) {
		return fmt.Errorf("is a %s in a response of %s", a.MessageName(), fullName(m))
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("malformed: %w", err)
	}
	return nil
}
