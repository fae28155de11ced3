{{/* A Kubernetes work pool's base job template (Prefect 3, prefect-kubernetes), one per
ServiceAccount: (dict "root" $ "account" "flows"|"deployer"). `{{ name }}`-style placeholders
are Prefect's, filled per flow run from `variables`; Helm emits them as literal strings.
A run (a deployment's or a flow run's job_variables) can set only what `variables` lists: the
image, command, ServiceAccount, namespace, labels and env are literal here, so no run can pick
another image or command, the deployer's rights, or other LONGMIX_* settings. */}}
{{- define "longmix.baseJobTemplate" -}}
{{- $root := .root -}}
{{- $labels := dict "root" $root "component" "flow-run" -}}
job_configuration:
  name: "{{ "{{ name }}" }}"
  namespace: {{ $root.Release.Namespace | quote }}
  # Prefect's own labels come first (app.kubernetes.io/name: the flow's name), these last: the
  # pods keep the labels the NetworkPolicies select
  labels:
    {{- include "longmix.selectorLabels" $labels | nindent 4 }}
  job_watch_timeout_seconds: "{{ "{{ job_watch_timeout_seconds }}" }}"
  pod_watch_timeout_seconds: "{{ "{{ pod_watch_timeout_seconds }}" }}"
  stream_output: "{{ "{{ stream_output }}" }}"
  # No `env` here: the worker prepends its PREFECT_* variables (API URL, flow run id) to the
  # container's env below, and a run's `env` has nowhere to go.
  job_manifest:
    apiVersion: batch/v1
    kind: Job
    metadata:
      generateName: "{{ "{{ name }}" }}-"
      namespace: {{ $root.Release.Namespace | quote }}
      labels:
        {{- include "longmix.labels" $labels | nindent 8 }}
    spec:
      backoffLimit: 0
      ttlSecondsAfterFinished: "{{ "{{ finished_job_ttl }}" }}"
      template:
        metadata:
          labels:
            {{- include "longmix.labels" $labels | nindent 12 }}
        spec:
          # no PodSpec fields, but prefect-kubernetes refuses a manifest without them; the API
          # server drops them
          parallelism: 1
          completions: 1
          restartPolicy: Never
          serviceAccountName: {{ include "longmix.name" $root }}-{{ .account }}
          securityContext:
            {{- include "longmix.podSecurityContext" dict | nindent 12 }}
          {{- with $root.Values.imagePullSecrets }}
          imagePullSecrets:
            {{- range . }}
            - name: {{ . }}
            {{- end }}
          {{- end }}
          containers:
            - name: prefect-job
              image: {{ include "longmix.image" $root | quote }}
              imagePullPolicy: {{ $root.Values.image.pullPolicy }}
              # args present: the worker adds its own only where there are none
              command: ["prefect"]
              args: ["flow-run", "execute"]
              env:
                {{- include "longmix.env" (dict "root" $root "mlflowAccount" "pipeline") | nindent 16 }}
                {{- include "longmix.prefectAuthEnv" (dict "root" $root "name" "PREFECT_API_AUTH_STRING") | nindent 16 }}
                {{- if $root.Values.ray.cluster.enabled }}
                - name: LONGMIX_RAY_ADDRESS
                  value: ray://{{ include "longmix.rayClusterName" $root }}-head-svc:10001
                {{- end }}
                - name: LONGMIX_AUDIT_SIGNING_KEY_FILE
                  value: /etc/longmix/audit/audit-signing.key
                - name: LONGMIX_AUDIT_PUBLIC_KEY_FILE
                  value: /etc/longmix/audit/audit-signing.pub
              resources:
                {{- toYaml $root.Values.prefect.flowRun.resources | nindent 16 }}
              securityContext:
                {{- include "longmix.containerSecurityContext" dict | nindent 16 }}
              volumeMounts:
                {{- include "longmix.volumeMounts" $root | nindent 16 }}
                - name: audit-signing-key
                  mountPath: /etc/longmix/audit
                  readOnly: true
          volumes:
            {{- include "longmix.volumes" $root | nindent 12 }}
            # the audit log's key pair: flow runs sign, no other pod holds the signing key. Not
            # optional: without it a run would fail at its first audit record, hours in.
            # 0400, root's: the kubelet adds read for fsGroup 1000, the flow's user, alone.
            - name: audit-signing-key
              secret:
                secretName: {{ $root.Values.secrets.auditSigningKey }}
                defaultMode: 0400
                items:
                  - {key: audit-signing.key, path: audit-signing.key}
                  - {key: audit-signing.pub, path: audit-signing.pub}
variables:
  type: object
  # the server refuses a deployment or flow run that names any other job variable
  additionalProperties: false
  properties:
    name: {type: string, title: Name, description: Name given to created Jobs}
    finished_job_ttl:
      type: integer
      title: Finished job TTL (s)
      default: {{ $root.Values.prefect.flowRun.finishedJobTtlSeconds }}
    job_watch_timeout_seconds: {type: integer, title: Job watch timeout (s)}
    pod_watch_timeout_seconds:
      type: integer
      title: Pod watch timeout (s)
      default: {{ $root.Values.prefect.flowRun.podWatchTimeoutSeconds }}
    stream_output: {type: boolean, title: Stream output, default: true}
{{- end -}}
