################################################################################
#
# triad-payload-kamailio: firmware/lab/payload/kamailio of this repository
# under /usr/share/triad/kamailio, as image/build.sh installs it
#
################################################################################

TRIAD_PAYLOAD_KAMAILIO_VERSION = local
TRIAD_PAYLOAD_KAMAILIO_SITE = $(BR2_EXTERNAL_TRIAD_PATH)/../firmware/lab/payload/kamailio
TRIAD_PAYLOAD_KAMAILIO_SITE_METHOD = local
TRIAD_PAYLOAD_KAMAILIO_LICENSE = Apache-2.0
# host-sqlite: the seed database is made on the build machine, as
# image/build.sh makes it with the build machine's sqlite3.
TRIAD_PAYLOAD_KAMAILIO_DEPENDENCIES = host-sqlite

# The seed is the PBX's initial location table ([filesystem] seed), in WAL
# mode (schema.sql sets it); -bail stops at the first error in the schema.
define TRIAD_PAYLOAD_KAMAILIO_BUILD_CMDS
	rm -f $(@D)/kamailio.db
	$(HOST_DIR)/bin/sqlite3 -bail $(@D)/kamailio.db <$(@D)/schema.sql >/dev/null
endef

define TRIAD_PAYLOAD_KAMAILIO_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0644 $(@D)/kamailio.cfg $(TARGET_DIR)/usr/share/triad/kamailio/kamailio.cfg
	$(INSTALL) -D -m 0644 $(@D)/schema.sql $(TARGET_DIR)/usr/share/triad/kamailio/schema.sql
	$(INSTALL) -D -m 0644 $(@D)/kamailio.db $(TARGET_DIR)/usr/share/triad/kamailio/seed/kamailio.db
endef

$(eval $(generic-package))
