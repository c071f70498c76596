# buildroot/external.mk: pulls in the make files of this BR2_EXTERNAL
# tree's packages. Buildroot includes this file with
# BR2_EXTERNAL_TRIAD_PATH set to this directory.
include $(sort $(wildcard $(BR2_EXTERNAL_TRIAD_PATH)/package/*/*.mk))
