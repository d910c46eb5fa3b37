package app

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	chart "helm.sh/helm/v4/pkg/chart/v2"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// fieldManager is the server-side apply manager of what mesh applies itself (the CRDs).
const fieldManager = "mesh"

// chartCRD is one CRD of the chart's crds/ directory, as applied and as read.
type chartCRD struct {
	raw *unstructured.Unstructured
	crd *apiextensionsv1.CustomResourceDefinition
}

// chartCRDs decodes the CRDs of the chart's crds/ directory, sorted by name.
func chartCRDs(ch *chart.Chart) ([]chartCRD, error) {
	var out []chartCRD
	for _, f := range ch.CRDObjects() {
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(f.File.Data)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", f.Name, err)
			}
			var m map[string]any
			if err := yaml.Unmarshal(doc, &m); err != nil {
				return nil, fmt.Errorf("read %s: %w", f.Name, err)
			}
			if len(m) == 0 {
				continue
			}
			u := &unstructured.Unstructured{Object: m}
			var crd apiextensionsv1.CustomResourceDefinition
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &crd); err != nil || crd.Kind != "CustomResourceDefinition" {
				return nil, fmt.Errorf("%s is not a CustomResourceDefinition (kind %q, err %v)", f.Name, u.GetKind(), err)
			}
			out = append(out, chartCRD{raw: u, crd: &crd})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].crd.Name < out[j].crd.Name })
	return out, nil
}

// applyCRDs applies the chart's CRDs server-side, taking over fields others set (an older
// install's CRDs are upgraded: Helm itself only ever creates CRDs), then waits until the
// apiserver serves each of them.
func applyCRDs(ctx context.Context, c client.Client, crds []chartCRD, timeout time.Duration) error {
	for _, crd := range crds {
		if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(crd.raw.DeepCopy()), client.FieldOwner(fieldManager), client.ForceOwnership); err != nil {
			return fmt.Errorf("apply CustomResourceDefinition %s: %w", crd.crd.Name, err)
		}
	}
	for _, crd := range crds {
		err := poll(ctx, 200*time.Millisecond, timeout, func(ctx context.Context) (bool, error) {
			var cur apiextensionsv1.CustomResourceDefinition
			if err := c.Get(ctx, client.ObjectKey{Name: crd.crd.Name}, &cur); err != nil {
				return false, err
			}
			for _, cond := range cur.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("wait for CustomResourceDefinition %s to be established: %w", crd.crd.Name, err)
		}
	}
	return nil
}

// countCustomResources counts the objects of a CRD in the whole cluster; -1 when they
// cannot be listed (the CRD is missing, or its version is not served).
func countCustomResources(ctx context.Context, c client.Client, crd *apiextensionsv1.CustomResourceDefinition) int {
	version := ""
	for _, v := range crd.Spec.Versions {
		if v.Served && (version == "" || v.Storage) {
			version = v.Name
		}
	}
	if version == "" {
		return -1
	}
	var list metav1.PartialObjectMetadataList
	list.SetGroupVersionKind(schema.GroupVersionKind{Group: crd.Spec.Group, Version: version, Kind: crd.Spec.Names.ListKind})
	if err := c.List(ctx, &list); err != nil {
		return -1
	}
	return len(list.Items)
}

// deleteCRD deletes a CRD (and so every object of it) and reports whether it existed.
func deleteCRD(ctx context.Context, c client.Client, name string) (bool, error) {
	crd := &apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := c.Delete(ctx, crd); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("delete CustomResourceDefinition %s: %w", name, err)
	}
	return true, nil
}
