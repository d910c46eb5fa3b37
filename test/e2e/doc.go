// Package e2e is Trellis's end-to-end suite: assertions on real traffic between real pods
// in a real cluster with the mesh installed from the project's Helm chart and the demo app
// from examples/shop deployed.
//
// The tests carry the build tag e2e, so `go test ./...` does not run them. Run them with
// `make test-e2e`, which starts the local cluster (hack/cluster.sh), builds and loads the
// images, installs the chart and the example (hack/deploy.sh), then runs
//
//	go test -tags e2e -count=1 -v ./test/e2e/
//
// against $KUBECONFIG. Each test that changes the mesh (weights, mTLS mode, the control
// plane's replicas) puts it back when it ends.
package e2e
