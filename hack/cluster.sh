#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, for Trellis's end-to-end tests
# (see hack/cluster/README.md and shared LOCAL-CLUSTER.md). Run as root.
#
#   hack/cluster.sh up              bring the cluster up (or, if it is up, check it); prints the kubeconfig
#   hack/cluster.sh down            stop it and undo everything `up` did; a no-op when it is down
#   hack/cluster.sh status          is it up and the node Ready? exits 1 if not
#   hack/cluster.sh load IMG.tar... import image tarballs into the cluster's containerd (k8s.io namespace)
#   hack/cluster.sh kubeconfig      print the admin kubeconfig's path
#
# Components: Debian's etcd, containerd 1.6, runc and CNI plugins; kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl K8S_VERSION built from
# the Go module proxy (hack/k8s-binaries.sh); CoreDNS built the same way
# (hack/cluster/build-coredns.sh) and run in the cluster; a pause image built from
# hack/cluster/pause. Builds are cached by version under TRELLIS_CACHE.
#
# Environment (default in brackets). The values `up` starts with are saved in
# $TRELLIS_CLUSTER_DIR/cluster.env and win until `down`:
#   TRELLIS_CLUSTER_DIR        state: configs, certs, logs, etcd, containerd, kubelet [/var/lib/trellis-cluster]
#   TRELLIS_CACHE              build cache [${XDG_CACHE_HOME:-$HOME/.cache}/trellis]
#   K8S_VERSION                Kubernetes version [v1.31.4]
#   COREDNS_VERSION            CoreDNS version [v1.11.3]
#   TRELLIS_NODE_NAME          node name [trellis-node]
#   TRELLIS_NODE_IP            node IP, on a port-less bridge [10.250.0.1]
#   TRELLIS_NODE_BRIDGE        the bridge holding the node IP [trellis-host]
#   TRELLIS_POD_BRIDGE         the CNI bridge of the pods [trellis0]
#   TRELLIS_POD_CIDR           cluster pod CIDR; the node's pods get its first /24 [10.244.0.0/16]
#   TRELLIS_SERVICE_CIDR       Service ClusterIP range [10.96.0.0/16]
#   TRELLIS_DNS_IP             ClusterIP of kube-dns [the 10th address of the service CIDR]
#   TRELLIS_CLUSTER_DOMAIN     [cluster.local]
#   TRELLIS_APISERVER_PORT     kube-apiserver, on the node IP [16443]
#   TRELLIS_ETCD_PORT          etcd clients, on 127.0.0.1 [22379]
#   TRELLIS_ETCD_PEER_PORT     etcd peers, on 127.0.0.1 [22380]
#   TRELLIS_KUBELET_PORT       kubelet API, on the node IP [20250]
#   TRELLIS_KUBELET_HEALTHZ_PORT  on 127.0.0.1 [20248]
#   TRELLIS_KCM_PORT           kube-controller-manager, on 127.0.0.1 [20257]
#   TRELLIS_SCHEDULER_PORT     kube-scheduler, on 127.0.0.1 [20259]
#   TRELLIS_PROXY_METRICS_PORT kube-proxy metrics, on 127.0.0.1 [20249]
#   TRELLIS_PROXY_HEALTHZ_PORT kube-proxy healthz, on 127.0.0.1 [20256]
#   TRELLIS_CLUSTER_TIMEOUT    seconds to wait for each step [180]
#
# Safety: no packet leaves the machine. FORWARD (and mangle POSTROUTING) DROP rules keep the pod
# and service CIDRs off every interface but the pod bridge, both CIDRs are routed to the port-less node bridge
# (so nothing falls through to the default route), CoreDNS has no forward plugin, containerd's
# image pulls go to a dead proxy on loopback, and NodePorts open on the node IP only.
# Processes are stopped by their recorded PID, never by name.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

DIR="${TRELLIS_CLUSTER_DIR:-/var/lib/trellis-cluster}"
CACHE="${TRELLIS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trellis}"
K8S_VERSION="${K8S_VERSION:-v1.31.4}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.11.3}"
NODE_NAME="${TRELLIS_NODE_NAME:-trellis-node}"
NODE_IP="${TRELLIS_NODE_IP:-10.250.0.1}"
NODE_BRIDGE="${TRELLIS_NODE_BRIDGE:-trellis-host}"
POD_BRIDGE="${TRELLIS_POD_BRIDGE:-trellis0}"
POD_CIDR="${TRELLIS_POD_CIDR:-10.244.0.0/16}"
SERVICE_CIDR="${TRELLIS_SERVICE_CIDR:-10.96.0.0/16}"
DNS_IP="${TRELLIS_DNS_IP:-}"
CLUSTER_DOMAIN="${TRELLIS_CLUSTER_DOMAIN:-cluster.local}"
APISERVER_PORT="${TRELLIS_APISERVER_PORT:-16443}"
ETCD_PORT="${TRELLIS_ETCD_PORT:-22379}"
ETCD_PEER_PORT="${TRELLIS_ETCD_PEER_PORT:-22380}"
KUBELET_PORT="${TRELLIS_KUBELET_PORT:-20250}"
KUBELET_HEALTHZ_PORT="${TRELLIS_KUBELET_HEALTHZ_PORT:-20248}"
KCM_PORT="${TRELLIS_KCM_PORT:-20257}"
SCHEDULER_PORT="${TRELLIS_SCHEDULER_PORT:-20259}"
PROXY_METRICS_PORT="${TRELLIS_PROXY_METRICS_PORT:-20249}"
PROXY_HEALTHZ_PORT="${TRELLIS_PROXY_HEALTHZ_PORT:-20256}"
TIMEOUT="${TRELLIS_CLUSTER_TIMEOUT:-180}"

SAVED_VARS=(CACHE K8S_VERSION COREDNS_VERSION NODE_NAME NODE_IP NODE_BRIDGE POD_BRIDGE POD_CIDR
  SERVICE_CIDR DNS_IP CLUSTER_DOMAIN APISERVER_PORT ETCD_PORT ETCD_PEER_PORT KUBELET_PORT
  KUBELET_HEALTHZ_PORT KCM_PORT SCHEDULER_PORT PROXY_METRICS_PORT PROXY_HEALTHZ_PORT)
if [ -f "$DIR/cluster.env" ]; then
  # shellcheck source=/dev/null
  . "$DIR/cluster.env"
fi

PKI="$DIR/pki"
CFG="$DIR/config"
LOGS="$DIR/logs"
RUN="$DIR/run"
CTRD_SOCK="$RUN/containerd/containerd.sock"
CTRD_STATE="$RUN/containerd/state"
CTRD_ROOT="$DIR/containerd"
KUBELET_ROOT="$DIR/kubelet"
CGROUP_ROOT="trellis-cluster"
KUBECONFIG_PATH="$DIR/kubeconfig"
BIN="$CACHE/k8s/$K8S_VERSION"
CNI_NET="trellis-cluster"
GUARD="trellis-cluster-guard"
PAUSE_IMAGE="trellis.local/pause:1"
COREDNS_IMAGE="trellis.local/coredns:$COREDNS_VERSION"
# The order `up` starts them in; `down` stops them in reverse.
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# Kernel settings that we, the kubelet, kube-proxy or the bridge plugin may change; `up` records
# them before the first change and `down` puts them back.
SYSCTLS=(net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables net/ipv4/conf/all/route_localnet
  vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys
  kernel/keys/root_maxbytes net/netfilter/nf_conntrack_max
  net/netfilter/nf_conntrack_tcp_timeout_established net/netfilter/nf_conntrack_tcp_timeout_close_wait)
# Host paths the components use outside the state dir; `down` removes those `up` created.
HOST_PATHS=(/var/log/containers /var/lib/cni/results /var/lib/cni /var/lib/kubelet/device-plugins
  /var/lib/kubelet /run/containerd/s /run/containerd /run/mount)
APT_PACKAGES=(containerd runc containernetworking-plugins conntrack iptables etcd-server openssl
  curl iproute2 util-linux)

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- small helpers -------------------------------------------------------------------------

ip2int() { local IFS=.; local a b c d; read -r a b c d <<<"$1"; echo $(((a << 24) | (b << 16) | (c << 8) | d)); }
int2ip() { echo "$((($1 >> 24) & 255)).$((($1 >> 16) & 255)).$((($1 >> 8) & 255)).$(($1 & 255))"; }
# cidr_net CIDR: the network address of CIDR as an integer.
cidr_net() {
  local len=${1#*/} n
  n=$(ip2int "${1%/*}")
  echo $((n & ((0xffffffff << (32 - len)) & 0xffffffff)))
}

derive() {
  local svc pod
  svc=$(cidr_net "$SERVICE_CIDR")
  pod=$(cidr_net "$POD_CIDR")
  [ "${POD_CIDR#*/}" -le 24 ] || die "TRELLIS_POD_CIDR $POD_CIDR: the prefix must be /24 or shorter"
  SVC_FIRST_IP=$(int2ip $((svc + 1)))
  [ -n "$DNS_IP" ] || DNS_IP=$(int2ip $((svc + 10)))
  NODE_POD_SUBNET="$(int2ip "$pod")/24"
  NODE_POD_GW=$(int2ip $((pod + 1)))
}

kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
ctrd() { ctr -a "$CTRD_SOCK" -n k8s.io "$@"; }

pid_of() { [ -f "$RUN/$1.pid" ] && sed -n 1p "$RUN/$1.pid"; }

# alive NAME: the process recorded for NAME runs (same PID and same executable).
alive() {
  local f="$RUN/$1.pid" pid exe now
  [ -f "$f" ] || return 1
  pid=$(sed -n 1p "$f")
  exe=$(sed -n 2p "$f")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  now=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "${now% (deleted)}" = "$exe" ]
}

log_tail() {
  local f="$LOGS/$1.log"
  if [ -f "$f" ]; then
    log "last lines of $f:"
    tail -n "${2:-25}" "$f" | cut -c1-400 >&2
  fi
}

fail() { # fail COMPONENT MESSAGE
  log "error: $2"
  log_tail "$1"
  log "full log: $LOGS/$1.log (all logs: $LOGS)"
  exit 1
}

# start NAME EXE ARGS...: starts EXE detached (its own session), logs to $LOGS/NAME.log and
# records its PID; does nothing if NAME already runs. Environment for EXE: START_ENV.
START_ENV=()
start() {
  local name=$1 exe pid
  shift
  if alive "$name"; then
    START_ENV=()
    return 0
  fi
  exe=$(readlink -f "$1")
  log "starting $name"
  printf '\n==== %s starting %s\n' "$(date -Is)" "$name" >>"$LOGS/$name.log"
  setsid env "${START_ENV[@]}" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  pid=$!
  START_ENV=()
  printf '%s\n%s\n' "$pid" "$exe" >"$RUN/$name.pid"
  for _ in $(seq 1 50); do
    sleep 0.1
    alive "$name" && return 0
  done
  fail "$name" "$name exited at once"
}

# stop NAME: SIGTERM to the recorded PID, wait, then SIGKILL.
stop() {
  local name=$1 pid i
  if alive "$name"; then
    pid=$(pid_of "$name")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      alive "$name" || break
      [ "$i" -lt 100 ] || { log "$name ignored SIGTERM for 20s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
      sleep 0.2
    done
    for i in $(seq 1 25); do alive "$name" || break; sleep 0.2; done
    ! alive "$name" || log "warning: $name (pid $pid) is still running"
  fi
  rm -f "$RUN/$name.pid"
}

# wait_until NAME DESCRIPTION COMMAND...: retries COMMAND until it succeeds, fails early when
# NAME's process died, and fails after TIMEOUT seconds.
wait_until() {
  local name=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$name" ] && ! alive "$name"; then fail "$name" "$name exited while waiting for $what"; fi
    [ $SECONDS -lt $deadline ] || fail "${name:-kubelet}" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
}

# --- status ------------------------------------------------------------------------------

# api PATH: GET PATH from the apiserver as the admin (curl: much faster than kubectl here).
api() {
  curl -fsS --max-time 5 -A hack-cluster.sh --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$NODE_IP:$APISERVER_PORT$1" 2>/dev/null
}
node_ready() { api "/api/v1/nodes/$NODE_NAME" | grep -Eq '"type": ?"Ready", ?"status": ?"True"'; }
dns_ready() { api /apis/apps/v1/namespaces/kube-system/deployments/coredns | grep -Eq '"readyReplicas": ?1[,}]'; }

# probe: sets API_OK, NODE_OK and DNS_OK (each true or false) from one look at the cluster.
probe() {
  API_OK=false NODE_OK=false DNS_OK=false
  [ -f "$PKI/admin.crt" ] && api /readyz >/dev/null || return 0
  API_OK=true
  if node_ready; then NODE_OK=true; fi
  if dns_ready; then DNS_OK=true; fi
}

healthy() {
  local c
  [ -f "$DIR/cluster.env" ] && [ -f "$KUBECONFIG_PATH" ] || return 1
  for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
  probe
  $API_OK && $NODE_OK && $DNS_OK
}

# print_status: what `probe` saw last, and where things are.
print_status() {
  local c state
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then state="running (pid $(pid_of "$c"))"; else state="NOT RUNNING"; fi
    printf '  %-24s %s\n' "$c" "$state"
  done
  if $API_OK; then
    printf '  %-24s %s\n' "apiserver" "ready at https://$NODE_IP:$APISERVER_PORT"
    if $NODE_OK; then state=Ready; else state=NotReady; fi
    printf '  %-24s %s\n' "node $NODE_NAME" "$state"
    if $DNS_OK; then state="ready at $DNS_IP"; else state="not ready"; fi
    printf '  %-24s %s\n' "coredns" "$state"
  else
    printf '  %-24s %s\n' "apiserver" "not answering"
  fi
  if guard_first; then state="first in FORWARD"; else state="NOT FIRST in FORWARD (hack/cluster.sh up fixes it)"; fi
  printf '  %-24s %s\n' "guard DROP rules" "$state"
  printf '  %-24s %s\n' "logs" "$LOGS"
  printf '  %-24s %s\n' "kubectl" "$BIN/kubectl"
  echo "kubeconfig: $KUBECONFIG_PATH"
  echo "  export KUBECONFIG=$KUBECONFIG_PATH"
}

cmd_status() {
  if [ ! -f "$DIR/cluster.env" ]; then
    echo "cluster: down (no state in $DIR)"
    return 1
  fi
  derive
  if healthy; then
    echo "cluster: up"
    print_status
    return 0
  fi
  echo "cluster: NOT healthy (hack/cluster.sh up restarts what is missing)"
  probe
  print_status
  return 1
}

# --- up: prerequisites -------------------------------------------------------------------------

ensure_packages() {
  local p missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  }
}

ensure_builds() {
  local out
  out=$(K8S_VERSION="$K8S_VERSION" TRELLIS_CACHE="$CACHE" "$REPO/hack/k8s-binaries.sh" \
    kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
  [ "$out" = "$BIN" ] || die "hack/k8s-binaries.sh put the binaries in $out, expected $BIN"
  COREDNS_BIN=$(COREDNS_VERSION="$COREDNS_VERSION" TRELLIS_CACHE="$CACHE" "$REPO/hack/cluster/build-coredns.sh")

  # Image tarballs, cached by the hash of what goes into them.
  local imgs="$CACHE/cluster-images" sum
  mkdir -p "$imgs"
  sum=$(cat "$REPO"/hack/cluster/pause/*.go "$REPO"/hack/imagebuild/*.go | sha256sum | cut -c1-16)
  PAUSE_TAR="$imgs/pause-$sum.tar"
  if [ ! -f "$PAUSE_TAR" ]; then
    log "building the pause image"
    (cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$imgs/pause" ./hack/cluster/pause)
    (cd "$REPO" && go run ./hack/imagebuild --name "$PAUSE_IMAGE" --binary "$imgs/pause" \
      --entrypoint /pause --user 0 --out "$PAUSE_TAR.tmp" >/dev/null)
    mv "$PAUSE_TAR.tmp" "$PAUSE_TAR"
  fi
  COREDNS_TAR="$imgs/coredns-$COREDNS_VERSION-$sum.tar"
  if [ ! -f "$COREDNS_TAR" ]; then
    log "building the CoreDNS image"
    (cd "$REPO" && go run ./hack/imagebuild --name "$COREDNS_IMAGE" --binary "$COREDNS_BIN" \
      --entrypoint /coredns --user 65532 --version "$COREDNS_VERSION" --out "$COREDNS_TAR.tmp" >/dev/null)
    mv "$COREDNS_TAR.tmp" "$COREDNS_TAR"
  fi
}

save_env() {
  local v
  {
    echo "# written by hack/cluster.sh up; removed by down"
    for v in "${SAVED_VARS[@]}"; do printf '%s=%q\n' "$v" "${!v}"; done
  } >"$DIR/cluster.env"
}

record_host_state() {
  local s p
  if [ ! -f "$DIR/sysctl.orig" ]; then
    for s in "${SYSCTLS[@]}"; do
      [ -f "/proc/sys/$s" ] && printf '%s %s\n' "$s" "$(cat "/proc/sys/$s")"
    done >"$DIR/sysctl.orig.tmp"
    mv "$DIR/sysctl.orig.tmp" "$DIR/sysctl.orig"
  fi
  if [ ! -f "$DIR/host-paths.created" ]; then
    for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] || echo "$p"; done >"$DIR/host-paths.created"
  fi
}

# --- up: certificates and kubeconfigs -------------------------------------------------------

# cert NAME SUBJECT EKU [SAN]: a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 subj=$2 eku=$3 san=${4:-}
  [ -f "$PKI/$name.crt" ] && return 0
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days 3650 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig FILE CERT: a kubeconfig for the client certificate CERT, with everything inline.
kubeconfig() {
  local file=$1 crt=$2
  [ -f "$file" ] && return 0
  cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: trellis
  cluster:
    server: https://$NODE_IP:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $crt
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$crt.crt")
    client-key-data: $(base64 -w0 "$PKI/$crt.key")
contexts:
- name: trellis
  context:
    cluster: trellis
    user: $crt
current-context: trellis
EOF
  chmod 600 "$file.tmp"
  mv "$file.tmp" "$file"
}

ensure_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    log "making the cluster CA and certificates (openssl)"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=trellis-cluster-ca" -days 3650 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$PKI/ca.crt" 2>/dev/null
  fi
  if [ ! -f "$PKI/sa.pub" ]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  local k="kubernetes.default.svc"
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:$k,DNS:$k.$CLUSTER_DOMAIN,DNS:localhost,DNS:$NODE_NAME,IP:127.0.0.1,IP:$NODE_IP,IP:$SVC_FIRST_IP"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  cert front-proxy-client "/CN=front-proxy-client" clientAuth
  cert admin "/O=system:masters/CN=kubernetes-admin" clientAuth
  cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert scheduler "/CN=system:kube-scheduler" clientAuth
  cert kube-proxy "/CN=system:kube-proxy" clientAuth
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP"
  kubeconfig "$KUBECONFIG_PATH" admin
  kubeconfig "$CFG/controller-manager.kubeconfig" controller-manager
  kubeconfig "$CFG/scheduler.kubeconfig" scheduler
  kubeconfig "$CFG/kube-proxy.kubeconfig" kube-proxy
  kubeconfig "$CFG/kubelet.kubeconfig" kubelet
}

# --- up: host network ----------------------------------------------------------------------------

set_sysctl() { [ "$(cat "/proc/sys/$1")" = "$2" ] || echo "$2" >"/proc/sys/$1"; }

guard_rules() { # prints "TABLE CHAIN RULE..." lines, one per guard rule
  local c
  for c in "$POD_CIDR" "$SERVICE_CIDR"; do
    echo "filter FORWARD -s $c ! -o $POD_BRIDGE -m comment --comment $GUARD -j DROP"
    echo "filter FORWARD -d $c ! -o $POD_BRIDGE -m comment --comment $GUARD -j DROP"
    echo "filter FORWARD -s $c ! -i $POD_BRIDGE -m comment --comment $GUARD -j DROP"
    echo "filter FORWARD -d $c ! -i $POD_BRIDGE -m comment --comment $GUARD -j DROP"
    # Not filter OUTPUT: there -o is still the interface chosen before kube-proxy's DNAT.
    echo "mangle POSTROUTING -d $c ! -o $POD_BRIDGE -m comment --comment $GUARD -j DROP"
  done
}

# ensure_guard: the guard rules exist and come first in FORWARD (kube-proxy inserts its own
# ACCEPT jumps at the top; ours must be evaluated before them).
guard_first() {
  local n first
  n=$(guard_rules | grep -c ' FORWARD ')
  first=$(iptables -S FORWARD | sed -n "2,$((n + 1))p" | grep -c -- "--comment $GUARD" || true)
  [ "$first" = "$n" ]
}

ensure_guard() {
  local table chain rule n pos
  if ! guard_first; then
    # New copies on top first, then the old ones go: the guard never has a gap.
    n=0
    while read -r table chain rule; do
      n=$((n + 1))
      # shellcheck disable=SC2086
      iptables -t "$table" -I "$chain" "$n" $rule
    done < <(guard_rules | grep ' FORWARD ')
    while :; do
      pos=$(iptables -S FORWARD | awk -v g="--comment $GUARD " -v n="$n" 'NR > n + 1 && index($0 " ", g) { print NR - 1 }' | tail -n 1)
      [ -n "$pos" ] || break
      iptables -D FORWARD "$pos"
    done
  fi
  while read -r table chain rule; do
    # shellcheck disable=SC2086
    iptables -t "$table" -C "$chain" $rule 2>/dev/null || iptables -t "$table" -I "$chain" 1 $rule
  done < <(guard_rules | grep -v ' FORWARD ')
}

ensure_network() {
  [ -d /proc/sys/net/bridge ] || modprobe br_netfilter 2>/dev/null ||
    die "net.bridge.bridge-nf-call-iptables is missing and br_netfilter cannot be loaded"
  set_sysctl net/ipv4/ip_forward 1
  set_sysctl net/bridge/bridge-nf-call-iptables 1
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    log "node IP $NODE_IP on bridge $NODE_BRIDGE"
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip link set "$NODE_BRIDGE" up
  ip addr show dev "$NODE_BRIDGE" | grep -q "inet $NODE_IP/32" || ip addr add "$NODE_IP/32" dev "$NODE_BRIDGE"
  # Both CIDRs end on the port-less bridge unless a more specific route (the pod bridge's /24)
  # or kube-proxy's DNAT takes them elsewhere: nothing falls through to the default route.
  ip route replace "$POD_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  ip route replace "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  ensure_guard
}

# --- up: containerd, CNI, images ---------------------------------------------------------

# put FILE: writes stdin to FILE unless FILE already holds exactly that (kube-proxy exits when
# its configuration file is touched).
put() {
  cat >"$1.new"
  if cmp -s "$1.new" "$1"; then rm -f "$1.new"; else mv "$1.new" "$1"; fi
}

write_configs() {
  mkdir -p "$CFG/cni" "$DIR/cni/ipam" "$CTRD_ROOT" "$CTRD_STATE" "$DIR/pod-logs" "$KUBELET_ROOT"
  put "$CFG/containerd.toml" <<EOF
# containerd for the local cluster only: its own root, state and socket.
version = 2
root = "$CTRD_ROOT/root"
state = "$CTRD_STATE"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CTRD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_ROOT/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails in runc.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CFG/cni"
    max_conf_num = 1
EOF
  put "$CFG/cni/10-$CNI_NET.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_POD_SUBNET", "gateway": "$NODE_POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$DIR/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  printf 'nameserver %s\n' "$DNS_IP" | put "$CFG/resolv.conf"
  put "$CFG/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
containerRuntimeEndpoint: unix://$CTRD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failSwapOn: false
clusterDNS: [$DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $CFG/resolv.conf
podLogsDir: $DIR/pod-logs
oomScoreAdj: 0
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
# Images come from tarballs and cannot be pulled again: never collect them, and do not evict
# pods for a disk that is merely fuller than usual.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
EOF
  put "$CFG/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $CFG/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
# NodePorts on the node IP only (not on the uplink, not on 127.0.0.1: no route_localnet).
nodePortAddresses: [$NODE_IP/32]
iptables:
  localhostNodePorts: false
oomScoreAdj: 0
# Leave the host's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

start_containerd() {
  mkdir -p "$RUN/containerd" "$RUN/runc"
  # Image pulls go to a proxy on a closed loopback port: no registry lookup leaves the machine.
  START_ENV=(HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=
    http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 no_proxy=)
  start containerd "$(command -v containerd)" --config "$CFG/containerd.toml" --log-level info
  wait_until containerd "containerd's socket" ctrd version
}

has_image() { ctrd images ls -q 2>/dev/null | grep -qxF "$1"; }

import_images() {
  has_image "$PAUSE_IMAGE" || ctrd images import "$PAUSE_TAR" >/dev/null
  has_image "$COREDNS_IMAGE" || ctrd images import "$COREDNS_TAR" >/dev/null
  has_image "$PAUSE_IMAGE" || die "$PAUSE_TAR did not import as $PAUSE_IMAGE"
}

ensure_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/; do
    [ "$d" = /sys/fs/cgroup/unified/ ] && continue
    [ -f "$d/cgroup.procs" ] || continue
    mkdir -p "$d$CGROUP_ROOT"
    if [ -f "$d/cpuset.cpus" ]; then
      [ -n "$(cat "$d$CGROUP_ROOT/cpuset.cpus")" ] || cat "$d/cpuset.cpus" >"$d$CGROUP_ROOT/cpuset.cpus"
      [ -n "$(cat "$d$CGROUP_ROOT/cpuset.mems")" ] || cat "$d/cpuset.mems" >"$d$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

# --- up: control plane and node ------------------------------------------------------------------

start_etcd() {
  mkdir -p "$DIR/etcd"
  chmod 700 "$DIR/etcd"
  start etcd "$BIN/etcd" --name trellis --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "trellis=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
    --quota-backend-bytes 4294967296 --snapshot-count 10000
  wait_until etcd "etcd health" sh -c "curl -fsS http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"
}

start_apiserver() {
  start kube-apiserver "$BIN/kube-apiserver" \
    --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port "$APISERVER_PORT" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
    --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC --allow-privileged=true --enable-admission-plugins NodeRestriction \
    --requestheader-client-ca-file "$PKI/ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --profiling=false --v 1
  wait_until kube-apiserver "kube-apiserver /readyz" api /readyz
}

start_controllers() {
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$CFG/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CFG/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CFG/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --allocate-node-cidrs --cluster-cidr "$POD_CIDR" --node-cidr-mask-size 24 \
    --service-cluster-ip-range "$SERVICE_CIDR" --use-service-account-credentials \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
    --profiling=false --v 1
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$CFG/scheduler.kubeconfig" \
    --authentication-kubeconfig "$CFG/scheduler.kubeconfig" \
    --authorization-kubeconfig "$CFG/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false --profiling=false --v 1
  wait_until kube-controller-manager "kube-controller-manager /healthz" curl -fsk "https://127.0.0.1:$KCM_PORT/healthz"
  wait_until kube-scheduler "kube-scheduler /healthz" curl -fsk "https://127.0.0.1:$SCHEDULER_PORT/healthz"
}

start_node() {
  ensure_cgroups
  start kubelet "$BIN/kubelet" --config "$CFG/kubelet.yaml" --kubeconfig "$CFG/kubelet.kubeconfig" \
    --root-dir "$KUBELET_ROOT" --cert-dir "$KUBELET_ROOT/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --pod-infra-container-image "$PAUSE_IMAGE" --v 1
  wait_until kubelet "kubelet /healthz" curl -fsS "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
  start kube-proxy "$BIN/kube-proxy" --config "$CFG/kube-proxy.yaml" --v 1
  wait_until kube-proxy "kube-proxy /healthz" curl -fsS "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
  # kube-proxy puts its FORWARD jumps (some ACCEPT) first: once they are there, ours go first again.
  wait_until kube-proxy "kube-proxy's FORWARD rules" sh -c "iptables -S FORWARD | grep -q -- '-j KUBE-FORWARD'"
  ensure_guard
  wait_until kubelet "node $NODE_NAME Ready" node_ready
}

start_dns() {
  if ! dns_ready; then
    sed -e "s|@DOMAIN@|$CLUSTER_DOMAIN|g" -e "s|@IMAGE@|$COREDNS_IMAGE|g" -e "s|@DNS_IP@|$DNS_IP|g" \
      "$REPO/hack/cluster/coredns.yaml" | kc apply -f - >>"$LOGS/coredns-apply.log" 2>&1 ||
      fail coredns-apply "kubectl apply of hack/cluster/coredns.yaml failed"
    log "waiting for CoreDNS"
    if ! kc -n kube-system rollout status deploy/coredns --timeout "${TIMEOUT}s" >/dev/null 2>&1; then
      kc -n kube-system describe pods -l k8s-app=kube-dns >&2 || true
      kc -n kube-system logs -l k8s-app=kube-dns --tail 30 >&2 || true
      fail kubelet "CoreDNS did not become ready"
    fi
  fi
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "run as root"
  derive
  if healthy; then
    ensure_guard
    echo "cluster: already up"
    print_status
    return 0
  fi
  local t0=$SECONDS
  ensure_packages
  ensure_builds
  mkdir -p "$DIR" "$LOGS" "$RUN" "$CFG"
  chmod 700 "$DIR"
  [ -f "$DIR/cluster.env" ] || save_env
  record_host_state
  ensure_pki
  write_configs
  ensure_network
  start_containerd
  import_images
  start_etcd
  start_apiserver
  start_controllers
  start_node
  start_dns
  echo "cluster: up in $((SECONDS - t0))s"
  probe
  print_status
}

# --- down ----------------------------------------------------------------------------------

# kill_recorded FILE...: SIGKILL the PIDs written in FILE (containerd's shim.pid and init.pid
# files) when that process is still one of this cluster's: a shim serving our socket, or a
# process in our cgroup root.
kill_recorded() {
  local f pid
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid=$(tr -dc 0-9 <"$f")
    if [ -z "$pid" ] || [ ! -d "/proc/$pid" ]; then continue; fi
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CTRD_SOCK" ||
      grep -q "/$CGROUP_ROOT/" "/proc/$pid/cgroup" 2>/dev/null; then
      log "killing leftover pid $pid (from $f)"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# kill_cgroup: SIGKILL whatever still runs in the kubelet's cgroup root (only pods go there).
kill_cgroup() {
  local f pid
  for f in /sys/fs/cgroup/pids/"$CGROUP_ROOT" /sys/fs/cgroup/memory/"$CGROUP_ROOT"; do
    [ -d "$f" ] || continue
    while read -r pid; do
      [ -n "$pid" ] || continue
      log "killing leftover pod process $pid"
      kill -KILL "$pid" 2>/dev/null || true
    done < <(find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null)
  done
}

stop_pods() {
  local t c tasks containers
  if alive containerd; then
    mapfile -t tasks < <(ctrd tasks ls -q 2>/dev/null || true)
    [ ${#tasks[@]} -eq 0 ] || log "removing ${#tasks[@]} containers"
    for t in "${tasks[@]}"; do ctrd tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    for t in "${tasks[@]}"; do ctrd tasks delete -f "$t" >/dev/null 2>&1 || true; done
    mapfile -t containers < <(ctrd containers ls -q 2>/dev/null || true)
    for c in "${containers[@]}"; do ctrd containers delete "$c" >/dev/null 2>&1 || true; done
  fi
}

unmount_all() {
  local i m mounts
  for i in 1 2 3 4 5; do
    mapfile -t mounts < <(awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r -u)
    [ ${#mounts[@]} -gt 0 ] || return 0
    for m in "${mounts[@]}"; do
      m=$(printf '%b' "$m")
      umount "$m" 2>/dev/null || { [ "$i" -lt 4 ] || umount -l "$m" 2>/dev/null || true; }
    done
  done
  ! grep -qF "$DIR/" /proc/mounts || log "warning: mounts left under $DIR: $(grep -cF "$DIR/" /proc/mounts)"
}

# purge_rules TOOL TABLE PATTERN: deletes every rule of TABLE whose line matches PATTERN.
purge_rules() {
  local tool=$1 table=$2 pat=$3 line
  local -a r
  while IFS= read -r line; do
    eval "r=($line)"
    "$tool" -t "$table" -D "${r[@]:1}" 2>/dev/null || true
  done < <("$tool-save" -t "$table" 2>/dev/null | grep -E '^-A ' | grep -E -- "$pat" || true)
}

# purge_chains TOOL TABLE REGEX: flushes and deletes the chains whose names match REGEX, and the
# rules that jump to them.
purge_chains() {
  local tool=$1 table=$2 re=$3 c chains
  purge_rules "$tool" "$table" "-j ($re)( |\$)"
  chains=$("$tool-save" -t "$table" 2>/dev/null | sed -n "s/^:\\(\\($re\\)\\) .*/\\1/p" || true)
  for c in $chains; do "$tool" -t "$table" -F "$c" 2>/dev/null || true; done
  for c in $chains; do "$tool" -t "$table" -X "$c" 2>/dev/null || true; done
}

clean_iptables() {
  local t tool table
  # Our guard rules.
  purge_rules iptables filter "--comment $GUARD( |\$)"
  purge_rules iptables mangle "--comment $GUARD( |\$)"
  # kube-proxy's rules, then whatever KUBE-* chains remain (the kubelet's canaries and hints).
  if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup >>"$LOGS/kube-proxy-cleanup.log" 2>&1 || true; fi
  for tool in iptables ip6tables; do
    command -v "$tool-save" >/dev/null || continue
    for table in nat filter mangle; do purge_chains "$tool" "$table" 'KUBE-[A-Z0-9-]*'; done
    # CNI portmap rules of our network (their comments name it), then its chains once unused.
    purge_rules "$tool" nat "name: \\\\\"$CNI_NET\\\\\""
    t=$("$tool-save" -t nat 2>/dev/null || true)
    while read -r c; do
      [ -z "$c" ] || grep -qE -- "-j $c( |\$)" <<<"$t" || purge_chains "$tool" nat "$c"
    done < <(sed -n 's/^:\(CNI-DN-[A-Za-z0-9]*\) .*/\1/p' <<<"$t")
    t=$("$tool-save" -t nat 2>/dev/null || true)
    if ! grep -q '^:CNI-DN-' <<<"$t"; then purge_chains "$tool" nat 'CNI-HOSTPORT-[A-Z]*'; fi
  done
}

restore_host_state() {
  local s v p
  if [ -f "$DIR/sysctl.orig" ]; then
    while read -r s v; do
      [ -f "/proc/sys/$s" ] || continue
      [ "$(cat "/proc/sys/$s")" = "$v" ] || { echo "$v" >"/proc/sys/$s" 2>/dev/null || log "warning: could not restore $s=$v"; }
    done <"$DIR/sysctl.orig"
  fi
  # The kubelet's symlinks to our pod logs, and libcni's result cache of our network.
  [ -d /var/log/containers ] && find /var/log/containers -maxdepth 1 -type l -lname "$DIR/*" -delete
  local f id
  for f in /var/lib/cni/results/"$CNI_NET"-*-eth0; do
    [ -e "$f" ] || continue
    id=${f#/var/lib/cni/results/"$CNI_NET"-}
    id=${id%-eth0}
    rm -f "$f" "/var/lib/cni/results/cni-loopback-$id-lo"
  done
  # The kubelet's device-plugin socket is always there, whatever its --root-dir.
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  if [ -f "$DIR/host-paths.created" ]; then
    while read -r p; do
      if [ -d "$p" ]; then find "$p" -depth -type d -empty -delete 2>/dev/null || true; fi
    done <"$DIR/host-paths.created"
  fi
  # The kubelet's cgroups (empty once every container is gone).
  for p in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
    if [ -d "$p" ]; then find "$p" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    [ ! -d "$p" ] || log "warning: could not remove cgroup $p"
  done
}

cmd_down() {
  [ "$(id -u)" = 0 ] || die "run as root"
  if [ ! -f "$DIR/cluster.env" ]; then
    echo "cluster: down (nothing to do)"
    return 0
  fi
  derive
  stop kubelet
  stop_pods
  stop kube-proxy
  stop containerd
  kill_recorded "$CTRD_STATE"/io.containerd.runtime.v2.task/*/*/init.pid \
    "$CTRD_STATE"/io.containerd.runtime.v2.task/*/*/shim.pid
  kill_cgroup
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  unmount_all
  local l
  for l in $(ip -o link show master "$POD_BRIDGE" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
    ip link del "$l" 2>/dev/null || true
  done
  ip link del "$POD_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  clean_iptables
  restore_host_state
  # Everything but the logs goes; they stay for a post-mortem until the next `up`. Never
  # through a mount that would not go away.
  if grep -qF "$DIR/" /proc/mounts; then
    log "warning: not deleting $DIR: something is still mounted under it"
  else
    find "$DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf --one-file-system {} +
  fi
  echo "cluster: down (logs kept in $LOGS)"
}

cmd_load() {
  [ $# -gt 0 ] || die "usage: hack/cluster.sh load IMAGE.tar..."
  alive containerd || die "the cluster is not up (hack/cluster.sh up)"
  local f
  for f in "$@"; do
    [ -f "$f" ] || die "$f: no such file"
    ctrd images import "$f" | sed 's/^/  /'
  done
}

cmd="${1:-}"
[ $# -eq 0 ] || shift
case "$cmd" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
load) cmd_load "$@" ;;
kubeconfig) echo "$KUBECONFIG_PATH" ;;
*)
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
