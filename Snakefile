# landfuse: download -> coregister -> patches -> augment -> train -> evaluate -> report, per dataset.
#   snakemake --cores 2 results/houston2013-twin/all
# Rules live in workflow/rules/ by concern; every knob lives in params/ (validated by workflow/schemas/).
from snakemake.utils import min_version, validate

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
