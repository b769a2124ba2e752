# A REPL in POSIX sh that starts in about a millisecond, for spawn/crash
# cycles at scale (a Python tool costs ~50 ms of CPU per start).
# Prompt "tp> ".  "crash N": exit with code N at once.  Anything else is
# answered "you said: <line>".
printf 'tp> '
while IFS= read -r line; do
    case $line in
        "crash "*) exit "${line#crash }" ;;
        *) printf 'you said: %s\ntp> ' "$line" ;;
    esac
done
