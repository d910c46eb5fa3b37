package meshstate

import (
	"fmt"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// Matches reports whether the selector selects a pod with these labels. An empty selector
// selects every pod. A requirement that cannot be built (an unknown operator; the CRD refuses
// those) selects nothing, so a bad policy never opens access.
func (s Selector) Matches(podLabels map[string]string) bool {
	sel, err := s.LabelSelector()
	if err != nil {
		return false
	}
	return sel.Matches(labels.Set(podLabels))
}

// LabelSelector converts the selector to apimachinery's form.
func (s Selector) LabelSelector() (labels.Selector, error) {
	sel := labels.SelectorFromSet(s.MatchLabels)
	for _, e := range s.MatchExpressions {
		var op selection.Operator
		switch e.Operator {
		case "In":
			op = selection.In
		case "NotIn":
			op = selection.NotIn
		case "Exists":
			op = selection.Exists
		case "DoesNotExist":
			op = selection.DoesNotExist
		default:
			return nil, fmt.Errorf("selector operator %q: use In, NotIn, Exists or DoesNotExist", e.Operator)
		}
		req, err := labels.NewRequirement(e.Key, op, e.Values)
		if err != nil {
			return nil, fmt.Errorf("selector requirement on %q: %w", e.Key, err)
		}
		sel = sel.Add(*req)
	}
	return sel, nil
}
