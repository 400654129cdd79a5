# landfuse: download -> coregister -> patches -> augment -> train -> evaluate -> report, per dataset.
#   snakemake --cores 2 results/houston2013-twin/all
# Rules live in workflow/rules/ by concern; every knob lives in params/ (validated by workflow/schemas/).
from snakemake.utils import min_version, validate

from stages.tracking import WorkflowServer

min_version("9.0")


configfile: "params/pipeline.yaml"


validate(config, "workflow/schemas/pipeline.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/augment.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        expand("results/{ds}/all", ds=config["datasets"]),


# Light rules run on the submitting host under a cluster executor (see workflow/profiles/slurm).
localrules:
    mlflow_init,
    index_runs,
    report,


# MLflow server for cluster runs (params: mlflow.server, off by default): started on this host before
# the first job, its URI exported as MLFLOW_TRACKING_URI to every job, stopped when the workflow ends.
# Jobs never run these hooks (Snakemake passes them --no-hooks).
MLFLOW_SERVER = WorkflowServer(config["mlflow"]["server"], pidfile="results/mlflow-server.pid")


onstart:
    MLFLOW_SERVER.start()


onsuccess:
    MLFLOW_SERVER.stop()


onerror:
    MLFLOW_SERVER.stop()
