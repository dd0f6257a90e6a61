{{- define "vidx.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vidx.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "vidx.tokenSecret" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecret }}{{- else -}}{{ include "vidx.fullname" . }}-token{{- end -}}
{{- end -}}

{{- define "vidx.redisUrl" -}}
{{- if .Values.redis.deploy -}}redis://{{ include "vidx.fullname" . }}-redis:6379/{{- else -}}{{ required "redis.url is required when redis.deploy is false" .Values.redis.url }}{{- end -}}
{{- end -}}

{{- define "vidx.coordinatorUrl" -}}
http://{{ include "vidx.fullname" . }}-coordinator:{{ .Values.coordinator.grpcPort }}
{{- end -}}
