{{/*
Naming and labels, in the style of the kuberay and cert-manager charts.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "ctxext.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, or <release>-<chart> (just <release> when it already contains the
chart name), cut to 63 characters (DNS label).
*/}}
{{- define "ctxext.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "ctxext.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "ctxext.labels" -}}
helm.sh/chart: {{ include "ctxext.chart" . }}
{{ include "ctxext.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ctxext
{{- end }}

{{/* Labels that select the operator pod (never change them: Deployment selectors are immutable). */}}
{{- define "ctxext.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ctxext.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "ctxext.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ctxext.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespaces where trainer pods run: trainer.namespaces, else operator.namespaces, else the release namespace. */}}
{{- define "ctxext.trainerNamespaces" -}}
{{- $namespaces := .Values.trainer.namespaces | default .Values.operator.namespaces | default (list .Release.Namespace) }}
{{- toJson (uniq $namespaces) }}
{{- end }}

{{/* The operator image: repository@digest when a digest is set, else repository:tag (default appVersion). */}}
{{- define "ctxext.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Pod Security "restricted": the pod-level part. The image's user is 10001 (see the Dockerfile).
*/}}
{{- define "ctxext.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod Security "restricted": the container-level part. */}}
{{- define "ctxext.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The operator's rules on namespaced resources: in a ClusterRole when it watches all namespaces, else in a
Role in each watched namespace. No wildcards; each rule says why.
*/}}
{{- define "ctxext.operatorNamespacedRules" -}}
# Watch ContextExtensionJobs, and patch them: kopf keeps its finalizer and its progress annotations
# (both under ctxext.dev) on the object with merge patches.
- apiGroups: ["ctxext.dev"]
  resources: ["contextextensionjobs"]
  verbs: ["get", "list", "watch", "patch"]
# Write status (phase, planned stages, conditions, results) through the status subresource.
- apiGroups: ["ctxext.dev"]
  resources: ["contextextensionjobs/status"]
  verbs: ["get", "patch"]
# Run each stage attempt as one PyTorchJob: create it, re-derive the actual state from the jobs it owns
# (get/list/watch, also after a restart), and suspend/resume it (patch runPolicy.suspend).
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["create", "get", "list", "watch", "patch"]
# The same for TrainJobs (Kubeflow Trainer v2, the other backend): create one per stage attempt, get/list/watch
# them (the operator watches both kinds, whichever backend operator.backend prefers: a job's spec.backend may
# pick the other), and suspend/resume (patch spec.suspend). Never delete: owner references do that.
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
  verbs: ["create", "get", "list", "watch", "patch"]
# Before a job's first stage, check that the trainer ServiceAccount exists in its namespace (else the
# job fails at once with condition TrainerIdentityMissing instead of PyTorchJobs whose pods never start).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get"]
# Post a Kubernetes Event for each transition (best effort; kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Annotations of the trainer identity objects: kept on uninstall so that running trainers can still report. */}}
{{- define "ctxext.trainerIdentityAnnotations" -}}
{{- if .Values.trainer.keepOnUninstall -}}
helm.sh/resource-policy: keep
{{- end }}
{{- end }}

{{/* NetworkPolicy egress rules every ctxext pod needs: DNS, and the API server's port(s). */}}
{{- define "ctxext.dnsAndApiServerEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- ports:
    {{- range .Values.networkPolicy.apiServerPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .Values.networkPolicy.apiServerCIDRs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* NetworkPolicy peer: Prometheus' namespace (networkPolicy.monitoringNamespace), or every namespace. */}}
{{- define "ctxext.monitoringPeer" -}}
- namespaceSelector:
  {{- with .Values.networkPolicy.monitoringNamespace }}
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
  {{- else }} {}
  {{- end }}
{{- end }}
