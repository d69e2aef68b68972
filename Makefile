# Shortcuts for the commands developers and CI run. Every target is a plain
# command you can also type yourself (nothing here is required: README's commands
# work without make). `make` or `make help` lists them.

.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

IMAGE ?= shout-proxy:dev
OVERLAY ?= prod
NAMESPACE_prod := shout-proxy
NAMESPACE_dev := shout-proxy-dev
FAKE_UPSTREAM_LISTEN ?= 127.0.0.1:9000

.PHONY: help debug run test lint fmt fake-upstream openapi build-docker debug-docker \
        validate prometheus-check bench pin-image deploy clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

debug: ## Run the proxy from a debug build (cargo run)
	cargo run

run: ## Run the proxy from a release build
	cargo run --release

test: ## Run every test, OpenAPI drift included (cargo test)
	cargo test

lint: ## Check formatting and run clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt --all

fake-upstream: ## Run the fake shoutcloud on 127.0.0.1:9000 (FAKE_UPSTREAM_LISTEN=...)
	cargo xtask fake --listen $(FAKE_UPSTREAM_LISTEN)

openapi: ## Regenerate the committed OpenAPI document
	SHOUT_UPDATE_OPENAPI=1 cargo test openapi

build-docker: ## Build the container image shout-proxy:dev (IMAGE=...)
	docker build \
	  --build-arg VERSION="$$(git describe --tags --always --dirty 2>/dev/null || echo dev)" \
	  --build-arg SHOUT_GIT_REVISION="$$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
	  --build-arg CREATED="$$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
	  -t $(IMAGE) .

debug-docker: build-docker ## Run the image with text debug logs, upstream = `make fake-upstream` on the host
	docker run --rm -it \
	  -p 8080:8080 -p 8081:8081 \
	  --read-only --cap-drop ALL --security-opt no-new-privileges \
	  --add-host host.docker.internal:host-gateway \
	  -e SHOUT_UPSTREAM_URL=http://host.docker.internal:9000/V1/SHOUT \
	  -e SHOUT_LOG_FORMAT=text -e SHOUT_LOG=debug \
	  $(IMAGE)

validate: ## Lint and validate Dockerfile, k8s manifests and workflows
	bash .ci/validate-delivery.sh

prometheus-check: ## Check the Prometheus rules, alerts and their tests
	bash .ci/prometheus-check.sh

bench: ## Run the load benchmark (needs wrk)
	cargo build --release --locked --bin shout-proxy
	cargo xtask bench

pin-image: ## Pin OVERLAY's image to IMAGE=<registry>/<name>@sha256:<digest> (then commit it)
	@[[ "$(IMAGE)" =~ ^[a-z0-9.:/_-]+@sha256:[0-9a-f]{64}$$ ]] \
	  || { echo "IMAGE must be <registry>/<name>@sha256:<64 hex>, got '$(IMAGE)'" >&2; exit 2; }
	@# The `images:` block is the last of the overlay's kustomization.yaml: rewrite it
	@# from there to the end, then check that the rendered Deployment runs that image.
	sed -i '/^images:$$/,$$d' k8s/overlays/$(OVERLAY)/kustomization.yaml
	printf 'images:\n  - name: ghcr.io/shout-proxy/shout-proxy\n    newName: %s\n    digest: %s\n' \
	  "$(firstword $(subst @, ,$(IMAGE)))" "$(lastword $(subst @, ,$(IMAGE)))" \
	  >>k8s/overlays/$(OVERLAY)/kustomization.yaml
	kubectl kustomize k8s/overlays/$(OVERLAY) | grep -Fx "        image: $(IMAGE)"

deploy: ## Apply k8s/overlays/$(OVERLAY) as committed and wait (OVERLAY=dev; current kube context)
	@# Only a digest pinned in git may be applied: anything else would run an image
	@# that git does not name, or one never pushed (`unreleased`).
	@grep -Eq '^[[:space:]]+digest: sha256:[0-9a-f]{64}$$' k8s/overlays/$(OVERLAY)/kustomization.yaml \
	  || { echo "k8s/overlays/$(OVERLAY) has no image digest: run make pin-image (the deploy workflow does)" >&2; exit 2; }
	kubectl apply -k k8s/overlays/$(OVERLAY)
	kubectl rollout status deployment/shout-proxy -n $(NAMESPACE_$(OVERLAY)) --timeout=5m

clean: ## Remove build artefacts
	cargo clean
