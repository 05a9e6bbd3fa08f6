#!/bin/sh
# Host discovery for the Horovod Elastic tests (tests/test_elastic.py).
# horovodrun passes no arguments: the state directory comes from the
# environment. Prints $SCALECOM_ELASTIC_DIR/hosts.before until a worker has
# created $SCALECOM_ELASTIC_DIR/trigger, then hosts.after.
dir="${SCALECOM_ELASTIC_DIR:?SCALECOM_ELASTIC_DIR is not set}"
if [ -e "$dir/trigger" ]; then
    cat "$dir/hosts.after"
else
    cat "$dir/hosts.before"
fi
