{{- define "vidx.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vidx.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (list $ "coordinator"). */}}
{{- define "vidx.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "vidx.tokenSecret" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecret }}{{- else -}}{{ include "vidx.fullname" . }}-token{{- end -}}
{{- end -}}

{{- define "vidx.redisPasswordSecret" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecret }}{{- else -}}{{ include "vidx.fullname" . }}-redis{{- end -}}
{{- end -}}

{{/* The CPU image (coordinator, autoscaler, CronJobs, CPU workers). */}}
{{- define "vidx.image" -}}
{{- $repository := required "image.repository is required: where you pushed the image built from Dockerfile (README: Build the images)" .Values.image.repository -}}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The worker's image: worker.image if set, else the CUDA image for GPU workers, else the CPU image. */}}
{{- define "vidx.workerImage" -}}
{{- $repository := .Values.worker.image.repository | default .Values.image.repository -}}
{{- $repository = required "image.repository is required: where you pushed the image built from Dockerfile (README: Build the images)" $repository -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.worker.image.tag -}}
{{- $tag = .Values.worker.image.tag -}}
{{- else if .Values.worker.gpu -}}
{{- $tag = printf "%s-cuda" $tag -}}
{{- end -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{/* Environment entries that set VIDX_REDIS (and the password it is built from). */}}
{{- define "vidx.redisEnv" -}}
{{- if .Values.redis.deploy }}
- name: REDIS_PASSWORD
  valueFrom: { secretKeyRef: { name: {{ include "vidx.redisPasswordSecret" . }}, key: password } }
- { name: VIDX_REDIS, value: "redis://:$(REDIS_PASSWORD)@{{ include "vidx.fullname" . }}-redis:6379/" }
{{- else if .Values.redis.existingSecret }}
- name: VIDX_REDIS
  valueFrom: { secretKeyRef: { name: {{ .Values.redis.existingSecret }}, key: url } }
{{- else }}
- { name: VIDX_REDIS, value: {{ required "redis.url (or redis.existingSecret) is required when redis.deploy is false" .Values.redis.url | quote }} }
{{- end }}
{{- end -}}

{{- define "vidx.coordinatorUrl" -}}
http://{{ include "vidx.fullname" . }}-coordinator:{{ .Values.coordinator.grpcPort }}
{{- end -}}

{{- define "vidx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ .Values.serviceAccount.name | default (include "vidx.fullname" .) }}{{- else -}}{{ .Values.serviceAccount.name | default "default" }}{{- end -}}
{{- end -}}

{{/* Pod-level settings every pod shares: security context, pull secrets. */}}
{{- define "vidx.podCommon" -}}
securityContext: {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "vidx.containerSecurityContext" -}}
securityContext: {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* The scratch volume behind /tmp: the root file system is read-only. */}}
{{- define "vidx.scratchVolume" -}}
- name: scratch
  emptyDir: { sizeLimit: {{ .Values.scratch.sizeLimit }} }
{{- end -}}

{{- define "vidx.scratchMount" -}}
- { name: scratch, mountPath: /tmp }
{{- end -}}

{{/* Object-store credentials for a container that reads or writes storage. */}}
{{- define "vidx.objectStoreEnvFrom" -}}
{{- with .Values.objectStore.existingSecret }}
envFrom:
  - secretRef: { name: {{ . }} }
{{- end }}
{{- end -}}

{{- define "vidx.objectStoreEnv" -}}
{{- with .Values.objectStore.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}
