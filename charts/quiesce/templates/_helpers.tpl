{{- define "quiesce.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "quiesce.operatorName" -}}
{{- printf "%s-operator" (include "quiesce.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "quiesce.webhookService" -}}
{{- printf "%s-webhook" (include "quiesce.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "quiesce.webhookConfiguration" -}}
{{- printf "%s-sidecar-injector" (include "quiesce.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "quiesce.sidecarRole" -}}
{{- printf "%s-sidecar" (include "quiesce.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "quiesce.labels" -}}
app.kubernetes.io/name: quiesce
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "quiesce.selectorLabels" -}}
app.kubernetes.io/name: quiesce
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
