# One image for every role of a minga swarm: the CLI is the entrypoint, so a container runs
# `minga bootstrap …`, `minga serve …`, `minga api …` or any other command (see docker-compose.yml).
# Build: docker build -t minga .
FROM node:lts-bookworm-slim

# The model is mounted at /model (read-only) and the prepared-span cache at /cache: they are not in
# the image. The project runs as the unprivileged `node` user of the base image.
RUN mkdir -p /minga /cache && chown node:node /minga /cache
USER node
WORKDIR /minga
COPY --chown=node:node . .

# The README's install step (pnpm 10 through npx, dependencies' build scripts off; CI=1 makes it
# install exactly the lockfile).
ENV CI=1
RUN npm run setup

ENTRYPOINT ["node", "packages/cli/bin/minga.mjs"]
CMD ["--help"]
