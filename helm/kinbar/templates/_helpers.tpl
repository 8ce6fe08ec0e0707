{{/* Chart name. */}}
{{- define "kinbar.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name. */}}
{{- define "kinbar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kinbar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{ include "kinbar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kinbar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kinbar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kinbar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kinbar.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image, pinned by digest when one is given. */}}
{{- define "kinbar.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Guard rails for values that cannot work. */}}
{{- define "kinbar.validate" -}}
{{- if and (eq .Values.datastore.kind "memory") (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "datastore.kind=memory keeps data in one process: use replicaCount: 1 and no autoscaling, or datastore.kind=postgres" -}}
{{- end -}}
{{- if not (has .Values.datastore.kind (list "postgres" "memory")) -}}
{{- fail "datastore.kind must be postgres or memory" -}}
{{- end -}}
{{- end -}}
