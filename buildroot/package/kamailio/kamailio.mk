################################################################################
#
# kamailio: the SIP server of the reference payload, core and the modules
# firmware/lab/payload/kamailio/kamailio.cfg loads
#
################################################################################

# 5.8 keeps the usrloc location table at version 9, the schema the
# payload's schema.sql (written for Debian's 5.6) creates.
KAMAILIO_VERSION = 5.8.8
KAMAILIO_SOURCE = kamailio-$(KAMAILIO_VERSION)_src.tar.gz
KAMAILIO_SITE = https://www.kamailio.org/pub/kamailio/$(KAMAILIO_VERSION)/src
KAMAILIO_LICENSE = GPL-2.0+
KAMAILIO_LICENSE_FILES = COPYING
KAMAILIO_DEPENDENCIES = host-bison host-flex sqlite
# The tarball's sha256 could not be computed where this tree was written
# (no access to kamailio.org); kamailio.hash holds the licence file's
# only. Add the tarball's line there and delete this exemption.
BR_NO_CHECK_HASH_FOR += $(KAMAILIO_SOURCE)

# The modules the payload loads (its loadmodule lines; a change there
# needs one here, as image/build.sh derives its list from the same file).
KAMAILIO_PAYLOAD_MODULES = \
	db_sqlite maxfwd pv registrar rr siputils sl textops tm tmx usrloc xlog

# Kamailio's own make system: `cfg` records the options, `all` builds.
# CROSS_COMPILE=true stops it probing the build machine's CPU and
# libraries; LOCALBASE/SYSBASE point its header and library searches at
# the staging sysroot.
KAMAILIO_MAKE_OPTS = \
	$(TARGET_CONFIGURE_OPTS) \
	CROSS_COMPILE=true \
	LOCALBASE="$(STAGING_DIR)/usr" \
	SYSBASE="$(STAGING_DIR)/usr" \
	ARCH="$(KERNEL_ARCH)" \
	OS=linux \
	FLAVOUR=kamailio \
	PREFIX=/usr \
	LIBDIR=lib \
	include_modules="db_sqlite"

define KAMAILIO_BUILD_CMDS
	$(TARGET_MAKE_ENV) $(MAKE) -C $(@D) $(KAMAILIO_MAKE_OPTS) cfg
	$(TARGET_MAKE_ENV) $(MAKE) -C $(@D) $(KAMAILIO_MAKE_OPTS) all
endef

# Kamailio installs into a scratch root (BASEDIR), and only the core, the
# payload's modules and the database library they link are copied to the
# target: no kamctl/kamdbctl (shell scripts), no sample configs.
define KAMAILIO_INSTALL_TARGET_CMDS
	rm -rf $(@D)/br-install
	$(TARGET_MAKE_ENV) $(MAKE) -C $(@D) $(KAMAILIO_MAKE_OPTS) \
		BASEDIR=$(@D)/br-install install
	$(INSTALL) -D -m 0755 $(@D)/br-install/usr/sbin/kamailio \
		$(TARGET_DIR)/usr/sbin/kamailio
	$(foreach m,$(KAMAILIO_PAYLOAD_MODULES),\
		$(INSTALL) -D -m 0755 $(@D)/br-install/usr/lib/kamailio/modules/$(m).so \
			$(TARGET_DIR)/usr/lib/kamailio/modules/$(m).so$(sep))
	cp -a $(@D)/br-install/usr/lib/kamailio/libsrdb1.so* \
		$(TARGET_DIR)/usr/lib/kamailio/
endef

# The user the payload runs as (image/build.sh gives it uid/gid 900).
define KAMAILIO_USERS
	kamailio 900 kamailio 900 * - - - Kamailio SIP server
endef

$(eval $(generic-package))
