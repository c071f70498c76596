################################################################################
#
# triad: the supervisor (firmware/triad of this repository) as /sbin/init
#
################################################################################

# The sources are the checkout this BR2_EXTERNAL tree is part of, so the
# supervisor and the tree that configures its kernel always come from the
# same commit. VERSION only names the build directory.
TRIAD_VERSION = local
TRIAD_SITE = $(BR2_EXTERNAL_TRIAD_PATH)/..
TRIAD_SITE_METHOD = local
# A developer's target/ holds gigabytes of build output; image/out the
# appliance images. Neither is source.
TRIAD_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude /target --exclude /image/out
TRIAD_LICENSE = Apache-2.0
# No TRIAD_LICENSE_FILES: the repository has no licence file yet, only
# `license = "Apache-2.0"` in Cargo.toml (buildroot/README.md says so).

# Buildroot vendors a cargo package's crates at download time, which a
# local site method has none of; and its vendoring rewrites
# .cargo/config.toml, which carries the +crt-static flag. So: fetch the
# crates of Cargo.lock into Buildroot's cargo home (in DL_DIR, kept
# between builds; cargo checks every crate against the checksum recorded
# in Cargo.lock) once the sources are synced, then build offline. The
# repository's .cargo/config.toml names the x86_64 glibc target, so only
# that platform's crates are fetched.
define TRIAD_FETCH_CRATES
	cd $(@D) && $(PKG_COMMON_CARGO_ENV) cargo fetch --locked --manifest-path Cargo.toml
endef
TRIAD_POST_RSYNC_HOOKS += TRIAD_FETCH_CRATES

TRIAD_PROFILE_DIR = $(if $(BR2_ENABLE_DEBUG),debug,release)
TRIAD_BIN = $(@D)/target/$(RUSTC_TARGET_NAME)/$(TRIAD_PROFILE_DIR)/triad

# Only the supervisor's binary, not the workspace's lab, simulator and
# test tools. +crt-static given here as well as in .cargo/config.toml:
# the environment wins over the file, and a static binary is the point.
define TRIAD_BUILD_CMDS
	cd $(@D) && \
	$(TARGET_MAKE_ENV) \
		$(TARGET_CONFIGURE_OPTS) \
		$(PKG_CARGO_ENV) \
		CARGO_TARGET_$(call UPPERCASE,$(RUSTC_TARGET_NAME))_RUSTFLAGS="-C target-feature=+crt-static" \
		cargo build \
			--offline \
			--locked \
			$(if $(BR2_ENABLE_DEBUG),,--release) \
			--manifest-path Cargo.toml \
			-p triad --bin triad
endef

# The layout image/build.sh gives the initramfs: the kernel runs
# /sbin/init (or /init); `triad status` and friends are /sbin/triad.
define TRIAD_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(TRIAD_BIN) $(TARGET_DIR)/sbin/init
	ln -sf sbin/init $(TARGET_DIR)/init
	ln -sf init $(TARGET_DIR)/sbin/triad
	mkdir -p $(TARGET_DIR)/var/lib/triad
endef

$(eval $(cargo-package))
