{{/* The Kubernetes work pool's base job template (Prefect 3): `{{ name }}`-style placeholders
are Prefect's, filled per flow run from `variables`; Helm emits them as literal strings. */}}
{{- define "longmix.baseJobTemplate" -}}
{{- $labels := dict "root" . "component" "flow-run" -}}
job_configuration:
  command: "{{ "{{ command }}" }}"
  env: "{{ "{{ env }}" }}"
  labels: "{{ "{{ labels }}" }}"
  name: "{{ "{{ name }}" }}"
  namespace: "{{ "{{ namespace }}" }}"
  cluster_config: "{{ "{{ cluster_config }}" }}"
  job_watch_timeout_seconds: "{{ "{{ job_watch_timeout_seconds }}" }}"
  pod_watch_timeout_seconds: "{{ "{{ pod_watch_timeout_seconds }}" }}"
  stream_output: "{{ "{{ stream_output }}" }}"
  job_manifest:
    apiVersion: batch/v1
    kind: Job
    metadata:
      generateName: "{{ "{{ name }}" }}-"
      labels: "{{ "{{ labels }}" }}"
      namespace: "{{ "{{ namespace }}" }}"
    spec:
      backoffLimit: 0
      ttlSecondsAfterFinished: "{{ "{{ finished_job_ttl }}" }}"
      template:
        metadata:
          labels:
            {{- include "longmix.labels" $labels | nindent 12 }}
        spec:
          restartPolicy: Never
          serviceAccountName: "{{ "{{ service_account_name }}" }}"
          securityContext:
            {{- include "longmix.podSecurityContext" dict | nindent 12 }}
          {{- with .Values.imagePullSecrets }}
          imagePullSecrets:
            {{- range . }}
            - name: {{ . }}
            {{- end }}
          {{- end }}
          containers:
            - name: prefect-job
              image: "{{ "{{ image }}" }}"
              imagePullPolicy: "{{ "{{ image_pull_policy }}" }}"
              args: "{{ "{{ command }}" }}"
              env:
                {{- include "longmix.env" . | nindent 16 }}
                {{- include "longmix.prefectAuthEnv" (dict "root" . "name" "PREFECT_API_AUTH_STRING") | nindent 16 }}
                {{- if .Values.ray.cluster.enabled }}
                - name: LONGMIX_RAY_ADDRESS
                  value: ray://{{ include "longmix.rayClusterName" . }}-head-svc:10001
                {{- end }}
              resources:
                {{- toYaml .Values.prefect.flowRun.resources | nindent 16 }}
              securityContext:
                {{- include "longmix.containerSecurityContext" dict | nindent 16 }}
              volumeMounts:
                {{- include "longmix.volumeMounts" . | nindent 16 }}
          volumes:
            {{- include "longmix.volumes" . | nindent 12 }}
variables:
  type: object
  properties:
    name: {type: string, title: Name, description: Name given to created Jobs}
    namespace:
      type: string
      title: Namespace
      default: {{ .Release.Namespace | quote }}
    image:
      type: string
      title: Image
      default: {{ include "longmix.image" . | quote }}
    image_pull_policy:
      type: string
      title: Image pull policy
      enum: [IfNotPresent, Always, Never]
      default: {{ .Values.image.pullPolicy }}
    service_account_name:
      type: string
      title: Service account
      description: "{{ include "longmix.name" . }}-flows, or {{ include "longmix.name" . }}-deployer for the promotion flow"
      default: {{ include "longmix.name" . }}-flows
    env:
      type: object
      title: Environment variables
      additionalProperties: {type: [string, "null"]}
    labels:
      type: object
      title: Labels
      additionalProperties: {type: string}
    command: {type: string, title: Command}
    finished_job_ttl:
      type: integer
      title: Finished job TTL (s)
      default: {{ .Values.prefect.flowRun.finishedJobTtlSeconds }}
    job_watch_timeout_seconds: {type: integer, title: Job watch timeout (s)}
    pod_watch_timeout_seconds:
      type: integer
      title: Pod watch timeout (s)
      default: {{ .Values.prefect.flowRun.podWatchTimeoutSeconds }}
    stream_output: {type: boolean, title: Stream output, default: true}
    cluster_config: {title: Cluster config, description: None means in-cluster}
{{- end -}}
