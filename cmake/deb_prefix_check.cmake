# CPACK_PROJECT_CONFIG_FILE: a Debian package installs under /usr, and the .pc file it ships
# names the prefix the build was configured with, so the two must agree.
if(CPACK_GENERATOR STREQUAL "DEB" AND NOT CPACK_SOCKETSERVER_INSTALL_PREFIX STREQUAL "/usr")
  message(FATAL_ERROR "socketserver: build the Debian package from a build configured with "
                      "-DCMAKE_INSTALL_PREFIX=/usr (this one has ${CPACK_SOCKETSERVER_INSTALL_PREFIX})")
endif()
