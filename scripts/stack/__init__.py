"""The local stack behind `scripts/dev` (its commands: __main__.py), one module per job:

  common         the repository's paths, the local region and account, StackError, tools, AWS clients
  template       template.yaml: its CloudFormation tags, functions, routes, local values
  openapi        openapi.yaml's operations
  router         cargo lambda watch's router (.local/cargo-lambda.toml), written from template.yaml
  sam_local_env  scripts/sam-local-env.json, written and checked
  supervisor     child processes in their own sessions, stopped with all they started
  services       DynamoDB Local and moto: started, set up, the functions' environment
  cognito        the local user pool in moto (sign-in tokens), its demo user, moto's signing key
  watch          cargo lambda watch: started, waited for, every function warmed
  observed       the tests' record of what each function called
  policies       the template's grants against that record
  checkov        checkov on the template
  artifacts      sam build's arm64 toolchain and its ELF aarch64 bootstraps
  nextest        the counts of cargo nextest's summary
  fuzz           schemathesis against the local API

Run it as `python scripts/stack ARGS` (or `python -m stack ARGS` with scripts/ on the path).
"""
