{{/* The object name: `<release>-operator`, cut to the 63 characters a label value allows. */}}
{{- define "kitsune.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kitsune.name" -}}
{{- default "kitsune-operator" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator pods; stable across upgrades. */}}
{{- define "kitsune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kitsune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The standard labels on every object of the release. */}}
{{- define "kitsune.labels" -}}
{{ include "kitsune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: kitsune
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kitsune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kitsune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kitsune.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "kitsune.proxyImage" -}}
{{- printf "%s:%s" .Values.proxyImage.repository (default .Chart.AppVersion .Values.proxyImage.tag) -}}
{{- end -}}

{{/* Where proxies reach the watch channel: this release's Service unless overridden. */}}
{{- define "kitsune.watchBaseUrl" -}}
{{- if .Values.watchBaseUrl -}}
{{- .Values.watchBaseUrl -}}
{{- else -}}
{{- printf "%s://%s.%s.svc:%v" (include "kitsune.scheme" . | lower) (include "kitsune.fullname" .) .Release.Namespace .Values.service.port -}}
{{- end -}}
{{- end -}}

{{/*
The rules the operator needs on KitsuneProxies and on what they own, in every watched
namespace. Each verb is one the code uses (operator/src):
- list/watch: the controller and the backend index (informers.rs, controller.rs);
- create+patch: server-side apply of the owned objects (an apply that creates is
  authorized as create as well);
- kitsuneproxies/status patch: the status apply; kitsuneproxies/finalizers update:
  owner references with blockOwnerDeletion need it where the
  OwnerReferencesPermissionEnforcement admission plugin runs (no finalizer is set);
- secrets get+create: read the identity key, create a generated one once (never list);
- events.k8s.io events create+patch: the event recorder (patch for a repeated event).
*/}}
{{- define "kitsune.workloadRules" -}}
- apiGroups: ["kitsune.dev"]
  resources: ["kitsuneproxies"]
  verbs: ["list", "watch"]
- apiGroups: ["kitsune.dev"]
  resources: ["kitsuneproxies/status"]
  verbs: ["patch"]
- apiGroups: ["kitsune.dev"]
  resources: ["kitsuneproxies/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* HTTPS when the watch channel serves TLS (watchTls.secretName), else HTTP. */}}
{{- define "kitsune.scheme" -}}
{{- if .Values.watchTls.secretName -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}
