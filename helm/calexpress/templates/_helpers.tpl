{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "calexpress.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart> unless the release name already contains the chart name.
Component names append "-<service>", so this is kept to 50 characters.
*/}}
{{- define "calexpress.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "calexpress.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "calexpress.labels" -}}
helm.sh/chart: {{ include "calexpress.chart" . }}
{{ include "calexpress.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: calexpress
{{- end }}

{{- define "calexpress.selectorLabels" -}}
app.kubernetes.io/name: {{ include "calexpress.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one service's objects. Call with (dict "root" $ "name" "isr").
*/}}
{{- define "calexpress.componentLabels" -}}
{{ include "calexpress.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "calexpress.componentSelectorLabels" -}}
{{ include "calexpress.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/*
Name of one service's objects: <fullname>-<service>.
*/}}
{{- define "calexpress.componentName" -}}
{{- printf "%s-%s" (include "calexpress.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "calexpress.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "calexpress.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "calexpress.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Secret holding the S3 and Kafka credentials: existingSecret or the chart's own.
*/}}
{{- define "calexpress.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- printf "%s-credentials" (include "calexpress.fullname" .) }}
{{- end }}
{{- end }}

{{- define "calexpress.envConfigMapName" -}}
{{- printf "%s-env" (include "calexpress.fullname" .) }}
{{- end }}

{{- define "calexpress.pipelineConfigMapName" -}}
{{- printf "%s-pipeline" (include "calexpress.fullname" .) }}
{{- end }}

{{/*
Topic each service consumes (without prefix): isr <- raw, characterize <- postisr, calibrate <- characterized.
*/}}
{{- define "calexpress.inputTopic" -}}
{{- $topics := dict "isr" "raw" "characterize" "postisr" "calibrate" "characterized" }}
{{- printf "%s%s" .root.Values.kafka.topicPrefix (get $topics .name) }}
{{- end }}

{{- define "calexpress.groupId" -}}
{{- printf "%s-%s" .root.Values.kafka.groupIdPrefix .name }}
{{- end }}

{{/*
Termination grace period of one service; fails when it does not cover the shutdown deadline.
*/}}
{{- define "calexpress.gracePeriod" -}}
{{- $grace := int (default .root.Values.terminationGracePeriodSeconds .svc.terminationGracePeriodSeconds) }}
{{- if le $grace (int .root.Values.shutdownDeadlineSeconds) }}
{{- fail (printf "services.%s: terminationGracePeriodSeconds (%d) must exceed shutdownDeadlineSeconds (%d) so that the current CCD can finish and commit" .name $grace (int .root.Values.shutdownDeadlineSeconds)) }}
{{- end }}
{{- $grace }}
{{- end }}
