{{/* The release's full name, at most 63 characters. */}}
{{- define "slimforge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "slimforge.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "slimforge.labels" -}}
{{ include "slimforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: slimforge
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "slimforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "slimforge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository@digest, else repository:tag. */}}
{{- define "slimforge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
What the controller may do with the builds it reconciles. This list is the
code's: src/controller/rbac.rs holds the same rules, and a test fails when
they differ.
*/}}
{{- define "slimforge.buildRules" -}}
- apiGroups: ["slimforge.dev"]
  resources: ["imagebuilds"]
  verbs: ["list", "watch"]
- apiGroups: ["slimforge.dev"]
  resources: ["imagebuilds/status"]
  verbs: ["patch"]
# Pods and claims name their ImageBuild as owner with blockOwnerDeletion,
# which the API server (OpenShift's in particular) allows only to those who
# may update the owner's finalizers.
- apiGroups: ["slimforge.dev"]
  resources: ["imagebuilds/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods", "persistentvolumeclaims"]
  verbs: ["list", "watch", "create", "delete"]
# Only read, to check that the Secrets and ConfigMap a build names exist
# (and a ConfigMap context's Dockerfile); the pods mount them.
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
