{{/*
Names are fixed, not derived from the release name: the control plane looks for its
Service, Secrets and webhook configuration by these names, and a cluster runs one mesh.
*/}}
{{- define "trellis.name" -}}trellis-controlplane{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "trellis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: trellis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: trellis
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels that select the control-plane pods (`mesh uninstall` waits for them by these). */}}
{{- define "trellis.selectorLabels" -}}
app.kubernetes.io/name: trellis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controlplane
{{- end -}}

{{/*
An image reference: trellis.image (dict "image" .Values.proxy.image "root" .)
  <registry>/<repository>:<tag> or <registry>/<repository>@<digest>
*/}}
{{- define "trellis.image" -}}
{{- $v := .root.Values -}}
{{- $registry := .image.registry | default $v.image.registry | default (($v.global).imageRegistry) | default "" | trimSuffix "/" -}}
{{- $repo := .image.repository -}}
{{- if $registry }}{{ $repo = printf "%s/%s" $registry $repo }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default $v.image.tag | default .root.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/*
Documents of generated/role.yaml, which `make generate` writes from the kubebuilder RBAC
markers: trellis.generatedRules (dict "kind" "ClusterRole" "root" .) gives the rules of
the document of that kind, so the chart's RBAC is exactly what the code declares.
*/}}
{{- define "trellis.generatedRules" -}}
{{- $found := false -}}
{{- range $doc := regexSplit "(?m)^---\\s*$" (.root.Files.Get "generated/role.yaml") -1 -}}
{{- $obj := fromYaml $doc -}}
{{- if and $obj (eq (get $obj "kind") $.kind) -}}
{{- $found = true -}}
{{- toYaml (get $obj "rules") -}}
{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "generated/role.yaml has no %s: run `make generate`" .kind) -}}
{{- end -}}
{{- end -}}
